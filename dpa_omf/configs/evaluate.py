"""WOSAC realism of the reference and every aligned model found in the workdir.

  python -m dpa_omf.launch --config=configs/evaluate.py[:smoke] --workdir=DIR
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    c = common.base_config(common.parse_variants(arg, ("smoke", "womd")))
    c.job = "evaluate"
    c.evaluate.challenge = "2024"
    return c
