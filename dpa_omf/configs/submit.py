"""A WOSAC submission of one model: 32 joint rollouts of every sim agent of every scenario, sharded, and the tar.

  python -m dpa_omf.launch --config=configs/submit.py[:smoke|:womd][,<align method>] --workdir=DIR \
      --config.submit.account_name=YOU@EXAMPLE.COM

Runs the stages it still lacks first (the reference; and the alignment when the submitted model is aligned).
Variants (comma-separated):
  smoke          seconds-scale run (tests): 4 scenarios in 2 shards
  womd           real WOMD (128 agent slots; set data.womd.*_pattern or submit.scenario_pattern)
  reference      submit the pretrained reference instead of the DPA-OMF model
  <align method> submit that alignment (any of post_training.ALIGN_METHODS); the default is dpa_omf
"""

from dpa_omf.configs import common, post_training

METHOD_VARIANTS = tuple(m for m in post_training.ALIGN_METHODS if m != "dpa_omf")


def get_config(arg: str | None = None):
    variants = common.parse_variants(arg, ("smoke", "womd", "reference") + METHOD_VARIANTS)
    models = variants & set(METHOD_VARIANTS + ("reference",))
    if len(models) > 1:
        raise ValueError(f"choose at most one model variant, got {sorted(models)}")
    c = common.base_config(variants - set(models))
    c.job = "submit"
    model = models.pop() if models else "dpa_omf"
    c.submit.model = model
    if model != "reference":
        c.align.method = model  # the alignment stage the submitted model comes from
    return c
