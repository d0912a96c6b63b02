"""Model front-ends: format detection from the bytes, the safety checks before any loader runs, and one
loader module per format behind a registry (detect.LOADERS)."""
