"""WOSAC realism of the reference and every aligned model found in the workdir.

The config file users pass to the launcher (`--config=configs/evaluate.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/evaluate.py`, inside the installed package.
"""

from dpa_omf.configs.evaluate import get_config

__all__ = ["get_config"]
