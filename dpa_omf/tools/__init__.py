"""dpa_omf.tools."""
