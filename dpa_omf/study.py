"""``python -m dpa_omf.study ...``: the research study's entry point (the package dpa_omf/tools/study/)."""

import sys

from dpa_omf import allocator

if __name__ == "__main__":
    allocator.ensure()  # before the study imports JAX: glibc reads its malloc settings only at start

from dpa_omf.tools.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
