"""The main job: DPA-OMF alignment, from nothing to a before/after realism table.

The config file users pass to the launcher (`--config=configs/align.py[:variant]`); its defaults and variants live in
`dpa_omf/configs/align.py`, inside the installed package.
"""

from dpa_omf.configs.align import get_config

__all__ = ["get_config"]
