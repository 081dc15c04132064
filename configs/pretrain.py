"""Pretrains the reference MotionLM by next-token prediction into WORKDIR/pretrain.

The config file users pass to the launcher (`--config=configs/pretrain.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/pretrain.py`, inside the installed package.
"""

from dpa_omf.configs.pretrain import get_config

__all__ = ["get_config"]
