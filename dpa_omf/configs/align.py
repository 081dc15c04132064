"""The main job: DPA-OMF alignment, from nothing to a before/after realism table.

  python -m dpa_omf.launch --config=configs/align.py[:variant] [--workdir=DIR]

Runs every stage it still lacks, in order (synthetic data -> reference
pretraining -> curation -> alignment -> evaluation), reuses finished stages on
a re-run, and prints the table. Variants (comma-separated):
  smoke         seconds-scale run of every stage (tests)
  womd          paper scale on real WOMD (set data.womd.*_pattern)
  dpa_adef      pairs ranked by ADE instead of OT
  sft_best_oa   SFT on the 32 closest rollouts by OT
  sft_best_ade  SFT on the 32 closest rollouts by ADE
  afd           expert preferred over every generated rollout
  dpo           DPO with the frozen reference on the OT pairs
  online        online DPA-OMF: each round ranks the current policy's own rollouts
  catk          CAT-K closed-loop SFT on the reference's closest-among-top-K rollouts
  ntp           compute-matched control: next-token prediction on the logs, same steps
"""

from dpa_omf.configs import common, post_training

METHOD_VARIANTS = tuple(m for m in post_training.ALIGN_METHODS if m != "dpa_omf")


def get_config(arg: str | None = None):
    variants = common.parse_variants(arg, ("smoke", "womd") + METHOD_VARIANTS)
    methods = variants & set(METHOD_VARIANTS)
    if len(methods) > 1:
        raise ValueError(f"choose at most one alignment method variant, got {sorted(methods)}")
    c = common.base_config(variants - set(METHOD_VARIANTS))
    c.job = "main"  # the stage graph up to evaluate (align alone: --config.job=align)
    c.align.method = methods.pop() if methods else "dpa_omf"
    # Every method shares the optimizer settings (the comparison in BUILD_NOTES gives no method its own tuning).
    return c
