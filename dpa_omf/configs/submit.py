"""A WOSAC submission of one model: 32 joint rollouts of every sim agent of every scenario, sharded, and the tar.

  python -m dpa_omf.launch --config=configs/submit.py[:smoke|:womd][,<align method>] --workdir=DIR \
      --config.submit.account_name=YOU@EXAMPLE.COM

Runs the stages it still lacks first (the reference; and the alignment when the submitted model is aligned).
Variants (comma-separated):
  smoke          seconds-scale run (tests): 4 scenarios in 2 shards
  womd           real WOMD (128 agent slots; set data.womd.*_pattern or submit.scenario_pattern)
  reference      submit the pretrained reference instead of the DPA-OMF model
  <method>       submit that alignment (any name in dpa_omf/jobs/align.py:METHODS); the default is dpa_omf
"""

from dpa_omf.configs import common


def get_config(arg: str | None = None):
    variants, method = common.parse_method_variant(arg, ("smoke", "womd", "reference"))
    if method and "reference" in variants:
        raise ValueError(f"choose at most one model variant, got {sorted(['reference', method])}")
    c = common.base_config(variants - {"reference"})
    c.job = "submit"
    model = "reference" if "reference" in variants else (method or "dpa_omf")
    c.submit.model = model
    if model != "reference":
        c.align.method = model  # the alignment stage the submitted model comes from
    return c
