"""Benchmarks of the sandbox, side by side with the alternatives: ``.venv/bin/python bench/run.py [--quick]``."""
