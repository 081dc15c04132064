"""dpa_omf.testing: fake scenes for tests and benchmarks (production packages never import it)."""
