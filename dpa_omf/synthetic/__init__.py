"""dpa_omf.synthetic: the embedded synthetic world (maps -> traffic -> expert -> dataset; statistics in JAX)."""
