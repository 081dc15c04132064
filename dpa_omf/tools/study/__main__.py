"""``python -m dpa_omf.tools.study``: the same as ``python -m dpa_omf.study``."""

import sys

from dpa_omf.tools.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
