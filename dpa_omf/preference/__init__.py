"""dpa_omf.preference."""
