"""A WOSAC submission of one model: 32 joint rollouts of every sim agent of every scenario, sharded, and the tar.

The config file users pass to the launcher (`--config=configs/submit.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/submit.py`, inside the installed package.
"""

from dpa_omf.configs.submit import get_config

__all__ = ["get_config"]
