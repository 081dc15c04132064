"""dpa_omf.jobs."""
