"""dpa_omf.geometry: basic shapes (shapes.py) and scene distances."""
