"""Workflows: what the commands do, built from the library (bench, evaluate, demo, sample)."""
