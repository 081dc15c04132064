"""dpa_omf.testing: fake scenes shared by tests and benchmarks (production packages do not import it)."""
