#!/usr/bin/env bash
# Runs one dpa_omf job on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=dpa-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   WORKDIR=gs://my-bucket/dpa_omf/run1 CONFIG=configs/align.py:womd \
#   bash launch/tpu_vm_pod.sh [--dry-run] [--no-create] [-- extra launcher flags]
#
# Creates the TPU VM if it does not exist (or reuses it), installs the project from
# REPO_URL@REPO_REF on every worker, then starts the same launcher command on all
# workers at once. On a TPU VM, jax.distributed finds the coordinator by itself
# (the launcher's --multihost=auto sees TPU_WORKER_HOSTNAMES); --multihost=yes
# makes that explicit. --dry-run prints every command instead of running it.
set -euo pipefail

DRY_RUN=0
CREATE=1
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --no-create) CREATE=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
: "${WORKDIR:?set WORKDIR (a gs:// bucket path shared by all workers)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/align.py:womd}"
NUM_WORKERS="${NUM_WORKERS:-4}"
REPO_URL="${REPO_URL:-https://github.com/your-org/dpa_omf.git}"
REPO_REF="${REPO_REF:-main}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project "$PROJECT"); fi

run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [[ $CREATE -eq 1 ]]; then
  if [[ $DRY_RUN -eq 0 ]] && gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" >/dev/null 2>&1; then
    echo "reusing TPU VM $TPU_NAME" >&2
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
  fi
fi

INSTALL="set -e; if [ ! -d dpa_omf ]; then git clone $REPO_URL dpa_omf; fi; cd dpa_omf; git fetch -q origin; git checkout -q $REPO_REF; python3 -m venv .venv; .venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e . 'jax[tpu]'"

extra_str=""
if [[ ${#EXTRA[@]} -gt 0 ]]; then extra_str=" $(printf '%q ' "${EXTRA[@]}")"; fi
for ((worker = 0; worker < NUM_WORKERS; worker++)); do
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker "$worker" \
    --command "$INSTALL"
done

pids=()
for ((worker = 0; worker < NUM_WORKERS; worker++)); do
  JOB="cd dpa_omf && .venv/bin/python -m dpa_omf.launch --config=$CONFIG --workdir=$WORKDIR --multihost=yes${extra_str}"
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "# worker $worker: $JOB"
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker "$worker" --command "$JOB"
  else
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker "$worker" \
      --command "$JOB" > "tpu_worker_${worker}.log" 2>&1 &
    pids+=("$!")
  fi
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
