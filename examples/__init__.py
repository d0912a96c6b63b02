"""Runnable end-to-end examples (the README demo is digits_demo)."""
