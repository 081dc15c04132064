"""Generates the embedded synthetic world into WORKDIR/data.

  python -m dpa_omf.launch --config=configs/data.py[:smoke|:womd] --workdir=DIR
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    c = common.base_config(common.parse_variants(arg, common.VARIANTS))
    c.job = "data"
    return c
