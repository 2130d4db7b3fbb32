"""Helpers shared across test folders (importable as ``support.*``; ``tests`` is on pythonpath)."""
