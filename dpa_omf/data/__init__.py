"""dpa_omf.data."""
