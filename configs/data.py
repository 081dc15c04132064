"""Generates the embedded synthetic world into WORKDIR/data.

The config file users pass to the launcher (`--config=configs/data.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/data.py`, inside the installed package.
"""

from dpa_omf.configs.data import get_config

__all__ = ["get_config"]
