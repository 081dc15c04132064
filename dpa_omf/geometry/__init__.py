"""dpa_omf.geometry: basic shapes (shapes.py); scene distances shared by metric and preference features (scene.py)."""
