"""dpa_omf: Direct Preference Alignment from Occupancy Measure Matching Feedback."""

__version__ = "0.1.0"
