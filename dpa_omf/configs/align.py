"""The main job: DPA-OMF alignment, from nothing to a before/after realism table.

  python -m dpa_omf.launch --config=configs/align.py[:variant] [--workdir=DIR]

Runs every stage it still lacks, in order (synthetic data -> reference
pretraining -> curation -> alignment -> evaluation), reuses finished stages on
a re-run, and prints the table. Variants (comma-separated):
  smoke         seconds-scale run of every stage (tests)
  womd          paper scale on real WOMD (set data.womd.*_pattern)
  <method>      align with that method instead of DPA-OMF: any name in dpa_omf/jobs/align.py:METHODS, whose
                entries say what each method trains on (the baselines of the paper's tables, the online and
                CAT-K methods, and the compute-matched next-token-prediction control)
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    variants, method = common.parse_method_variant(arg, ("smoke", "womd"))
    c = common.base_config(variants)
    c.job = "main"  # the stage graph up to evaluate (align alone: --config.job=align)
    c.align.method = method or "dpa_omf"  # the config boundary refuses a name that is not a method
    # Every method shares the optimizer settings (the comparison in BUILD_NOTES gives no method its own tuning).
    return c
