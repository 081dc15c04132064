"""dpa_omf.evaluate."""
