"""dpa_omf.io."""
