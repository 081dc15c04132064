"""Preference data from implicit feedback: rollouts -> features -> OT distance -> pairs.

  python -m dpa_omf.launch --config=configs/curate.py[:smoke] --workdir=DIR

Runs the missing earlier stages (data, pretrain) first.
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    c = common.base_config(common.parse_variants(arg, ("smoke", "womd")))
    c.job = "curate"
    return c
