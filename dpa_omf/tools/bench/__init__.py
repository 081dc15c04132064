"""The benchmarks, one module per benchmark; ``cli`` is their command line (``python -m dpa_omf.bench``)."""
