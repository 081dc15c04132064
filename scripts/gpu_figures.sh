#!/usr/bin/env bash
# The project's one accelerator script (issue 12): on ONE GPU/TPU, in under ~8 minutes, measure what the
# BUILD_NOTES' "GPU figures" table needs and write ONE JSON.
#
# Usage:  scripts/gpu_figures.sh OUT.json [WHEELS_DIR]
#   WHEELS_DIR: a folder of wheels for what a bare accelerator machine with jax/flax/optax/orbax lacks
#   (ott-jax, ml-collections, numba, llvmlite, POT, tensorboardX, tqdm, absl-py, ...): installed with
#   `pip install --no-index --find-links WHEELS_DIR`, then this checkout without its dependencies.
#   Without it, the script assumes the environment is complete.
#
# Figures (each a `python -m dpa_omf.bench ...` run, the same code as on the CPU):
#   curate scenes/s, 32 and 128 agents, batched vs per-scene loop   (bench curate --devices 1)
#   evaluate scenes/s (realism), batched vs per-scene loop          (bench evaluate --devices 1)
#   OT ms per scene for every solver, 80 and 16 steps               (bench ot --all_methods)
#   rollouts 64 x 128 agents x 8 s                                  (bench rollout)
#   train scenes/s                                                  (bench train)
#   realism ms per scene, one scene and a vmapped batch             (bench realism)
#   AOT memory of the train and curate steps                        (launch --dry_run, :womd sizes)
# Each part has its own time limit; a part that fails or runs out is recorded as such and the rest go on.
set -uo pipefail
OUT="${1:?usage: scripts/gpu_figures.sh OUT.json [WHEELS_DIR]}"
WHEELS="${2:-}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
TMP="$(mktemp -d)"
export DPA_OMF_COMPILATION_CACHE="${DPA_OMF_COMPILATION_CACHE:-$TMP/jax_cache}"

if [[ -n "$WHEELS" ]]; then
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" ott-jax ml-collections numba POT tensorboardX tqdm \
    absl-py matplotlib scipy protobuf google-crc32c >&2 || echo "gpu_figures: some wheels missing" >&2
  "$PY" -m pip install -q --no-deps -e . >&2
fi
"$PY" -c "import jax; print('gpu_figures: backend', jax.default_backend(), jax.devices())" >&2

part() {  # part NAME SECONDS CMD...: runs one measurement, keeps its JSON or the reason it has none
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$TMP/$name.log" 2>&1; then
    echo "gpu_figures: $name done in $((SECONDS - t0)) s" >&2
  else
    echo "gpu_figures: $name FAILED or timed out after $((SECONDS - t0)) s" >&2
    tail -5 "$TMP/$name.log" >&2
    echo "{\"failed\": true, \"seconds\": $((SECONDS - t0))}" > "$TMP/$name.json.failed"
  fi
}

B="$PY -m dpa_omf.bench"
part curate32   80 $B curate --json "$TMP/curate32.json" --devices 1 --num_agents 32 --scenes 8 --scenes_per_device 8 --repeats 1
part curate128  80 $B curate --json "$TMP/curate128.json" --devices 1 --num_agents 128 --scenes 8 --scenes_per_device 8 --repeats 1
part evaluate   50 $B evaluate --json "$TMP/evaluate.json" --devices 1 --scenes 8 --scenes_per_device 8 --repeats 1
part ot80       70 $B ot --json "$TMP/ot80.json" --steps 80 --scenes 5 --loop_scenes 2 --device_exact_scenes 2 --all_methods
part ot16       30 $B ot --json "$TMP/ot16.json" --steps 16 --scenes 5 --loop_scenes 2 --device_exact_scenes 2 --all_methods
part rollout    30 $B rollout --json "$TMP/rollout.json" --agents 128 --rollouts 64 --repeats 3
part train      50 $B train --json "$TMP/train.json" --agents 32,128 --repeats 3
part realism    25 $B realism --json "$TMP/realism.json" --batch 16 --repeats 3
part aot        40 "$PY" -m dpa_omf.launch --config=configs/pretrain.py:womd --workdir="$TMP/aot" --dry_run
cp "$TMP/aot/aot/report.json" "$TMP/aot.json" 2>/dev/null || true

"$PY" - "$TMP" "$OUT" <<'PY'
import json, pathlib, sys, jax
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
names = ("curate32", "curate128", "evaluate", "ot80", "ot16", "rollout", "train", "realism", "aot")
result = {"device": str(jax.devices()[0]), "device_kind": jax.devices()[0].device_kind,
          "backend": jax.default_backend(), "jax": jax.__version__}
for n in names:
    f, failed = tmp / f"{n}.json", tmp / f"{n}.json.failed"
    result[n] = json.loads(f.read_text()) if f.exists() else json.loads(failed.read_text()) if failed.exists() \
        else {"failed": True}
out.write_text(json.dumps(result, indent=2, default=str))
print(f"gpu_figures: wrote {out}", file=sys.stderr)
PY
