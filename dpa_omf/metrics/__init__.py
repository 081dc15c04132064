"""dpa_omf.metrics."""
