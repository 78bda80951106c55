"""Logic behind the scripts in ``tools/`` (kept importable and testable)."""
