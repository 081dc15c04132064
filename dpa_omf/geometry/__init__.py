"""dpa_omf.geometry: basic shapes (shapes.py) and the scene distances shared by the metric and the preference features (scene.py)."""
