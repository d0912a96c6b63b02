"""Bundles: the manifest schema, atomic writing, verification and firmware sources."""
