"""dpa_omf.synthetic."""
