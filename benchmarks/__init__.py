"""Scripts that print ratios against the plain upstream tools; run from the repository root."""
