"""Benchmarks; each writes its figures to a JSON file (see README, "Speed")."""
