"""dpa_omf.viz."""
