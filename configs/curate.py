"""Preference data from implicit feedback: rollouts -> features -> OT distance -> pairs.

The config file users pass to the launcher (`--config=configs/curate.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/curate.py`, inside the installed package.
"""

from dpa_omf.configs.curate import get_config

__all__ = ["get_config"]
