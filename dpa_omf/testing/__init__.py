"""Fake scenes and records shared by tests and benchmarks (production packages never import this)."""
