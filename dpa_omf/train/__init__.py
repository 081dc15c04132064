"""dpa_omf.train."""
