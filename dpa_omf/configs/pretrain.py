"""Pretrains the reference MotionLM by next-token prediction into WORKDIR/pretrain.

  python -m dpa_omf.launch --config=configs/pretrain.py[:smoke|:womd] --workdir=DIR
  python -m dpa_omf.launch --config=configs/pretrain.py:womd --workdir=DIR --dry_run   # memory check

Runs the data stage first when WORKDIR/data lacks it (synthetic source).
Variants: `smoke` (seconds on CPU, used by tests), `womd` (128 agents, real
WOMD files from data.womd.*_pattern, bf16 compute, batch 64).
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    c = common.base_config(common.parse_variants(arg, common.VARIANTS))
    c.job = "pretrain"
    return c
