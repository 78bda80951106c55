"""Compatibility fixes applied once on ``import evit_mm``."""
