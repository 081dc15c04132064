#!/usr/bin/env bash
# Creates a separate virtual environment with the official Waymo Open Dataset
# sim-agents metric code (waymo-open-dataset-tf-2-12-0==1.6.7, TensorFlow 2.13),
# the version that produced ../shared/golden/wosac. It cannot live beside the
# project's stack (old numpy/jax/TF pins), so it never touches /work/venv.
#
# Usage:  scripts/official_wosac_env.sh [ENV_DIR]
#   ENV_DIR defaults to $WOSAC_ENV or ~/.cache/dpa_omf/wosac-venv.
# Then:   ENV_DIR/bin/python scripts/official_check.py --help
# Needs Python 3.10 or 3.11 (set PYTHON=/path/to/python3.x to choose).
set -euo pipefail

ENV_DIR="${1:-${WOSAC_ENV:-$HOME/.cache/dpa_omf/wosac-venv}}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for cand in python3.11 python3.10; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON="$(command -v "$cand")"; break; fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "official_wosac_env.sh: need python3.10 or python3.11 (set PYTHON=...)" >&2
  exit 1
fi
case "$ENV_DIR" in
  /work/venv|/work/venv/*) echo "refusing to install into the project venv: $ENV_DIR" >&2; exit 1 ;;
esac

echo "creating $ENV_DIR with $PYTHON" >&2
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install --upgrade "pip<25" >&2
# Pins of the environment that produced the golden values (facts.json).
"$ENV_DIR/bin/pip" install \
  "waymo-open-dataset-tf-2-12-0==1.6.7" \
  "tensorflow==2.13.0" "tensorflow-probability==0.21.0" "numpy==1.23.5" >&2
"$ENV_DIR/bin/python" - <<'PY'
from waymo_open_dataset.wdl_limited.sim_agents_metrics import metrics  # noqa: F401
import tensorflow as tf
print("official WOSAC env ready: tensorflow", tf.__version__)
PY
echo "$ENV_DIR"
