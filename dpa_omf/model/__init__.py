"""dpa_omf.model."""
