"""Held-out preference accuracy of aligned models on OT pairs none of them trained on (the paper's Table 3).

    python -m dpa_omf.tools.preference_accuracy --pairs_from=CURATED_WORKDIR --rows=80:144 \\
        --workdir=W [--workdir=W2 ...] --out=FILE.json [--variant=V] [--batch=4]
    python -m dpa_omf.tools.preference_accuracy --combine=SEED0.json --combine=SEED1.json ... --out=FILE.json

``--pairs_from``: a workdir whose curate stage ranked more training scenes than the models were aligned on, e.g.
a 4x data arm of the study: rankings are a prefix of the training split, each with its scene's own rollout keys,
so its first rankings are the 1x curation's and the later ones were never trained on. ``--rows``: those rankings
(``a:b``). A ranking whose scene a workdir's own curation holds is refused (it may have been trained on).

Every pair of each ranking (``curate.top_k``: the k-th closest rollout by OT distance against the k-th farthest) is
scored by the reference of the first workdir and by every finished alignment of each workdir, with the alignment
job's held-out evaluation (``align.make_eval_fn``, DPA-OMF's CPL score): the accuracy is the share of pairs whose
preferred rollout scores higher, beside the NLLs of both sides and of the expert and the KL to the reference.
``--variant``: the ``configs/align.py`` variant the workdirs were made with (model, tokenizer and data sizes).

JSON: ``{"pairs_from", "rows", "scenes", "pairs_per_scene", "models": {"<workdir>/<model>": {"pref_accuracy",
"pairs", "nll_preferred", "nll_unpreferred", "nll_expert", "kl_to_reference", "accuracy_per_scene"}}}`` (the
reference once, as ``reference``; ``accuracy_per_scene``: each ranking's share, for paired intervals over scenes).
``--batch`` scenes are scored per step, each as its own batch of one (``jax.vmap`` of the evaluation), so the
shares are per scene.

``--combine``: the files of several alignment seeds (one workdir each, the same scenes) as one table: per method,
the mean accuracy over seeds and scenes and its paired differences to the reference and to DPA-OMF, with the
study's two-level bootstrap over seeds and scenes (``metrics.stats``): ``{"files", "scenes", "pairs_per_scene",
"methods": {method: {"pref_accuracy", "per_seed", "vs_reference", "vs_dpa_omf"}}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import numpy as np

from dpa_omf import atomic
from dpa_omf.configs import align as align_config
from dpa_omf.jobs import align, curate, prepare, pretrain
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import stats
from dpa_omf.train import checkpointing, sharding


def scene_ids(shards: dict, rows: np.ndarray) -> set[tuple[str, int]]:
    """(data file name, record) of each ranking's scene (file names: the same data linked into several workdirs)."""
    return {(pathlib.Path(str(shards["files"][int(shards["file_index"][r])])).name, int(shards["record_index"][r]))
            for r in rows}


def parse_rows(text: str, n: int) -> np.ndarray:
    a, _, b = text.partition(":")
    rows = np.arange(int(a), int(b) if b else n)
    if len(rows) == 0 or rows[-1] >= n or rows[0] < 0:
        raise SystemExit(f"preference_accuracy: --rows={text} is not inside the {n} rankings of --pairs_from")
    return rows


def per_scene_eval(model, cfg: cfg_lib.AlignConfig):
    """``f(params, batch, frozen)``: the alignment job's held-out evaluation of each scene of ``batch`` (leaves
    ``[B, ...]``) on its own: ``{name: (sums [B], counts [B])}``."""
    one = align.make_eval_fn(model, cfg)

    def f(params, batch, frozen):
        return jax.vmap(lambda b: one(params, jax.tree.map(lambda x: x[None], b), None, frozen))(batch)

    return jax.jit(f)


def accuracy(config, pairs_from: str, rows_text: str, workdirs: list[str], batch: int = 4) -> dict:
    shards = curate.load_shards(pairs_from)
    rows = parse_rows(rows_text, shards["tokens"].shape[0])
    held = scene_ids(shards, rows)
    for w in workdirs:
        own = curate.load_shards(w)
        overlap = held & scene_ids(own, np.arange(own["tokens"].shape[0]))
        if overlap:
            raise SystemExit(f"preference_accuracy: {len(overlap)} scenes of --rows are curated in {w} (its models "
                             f"may have trained on them), e.g. {sorted(overlap)[:2]}")
    cfg = cfg_lib.align(config)
    k = shards["preferred"].shape[1]
    # every stored pair once: drawing all K pairs without replacement takes each exactly once
    eval_cfg = dataclasses.replace(cfg, method="dpa_omf", offline_loss="pairs", pairs_per_scene=k,
                                   cpl=dataclasses.replace(cfg.cpl, credit="scene"))
    store = prepare.open_scenes(config, pairs_from, "train", [str(f) for f in shards["files"]])
    pairs = align.PairBatches(shards, rows, store, eval_cfg, batch, config.seed, shuffle=False, process_index=0,
                              process_count=1)
    # batch i holds rankings rows[i * batch ..] in order; the last wraps around to the first (one program), and
    # only its first scenes are kept
    batches = [pairs.batch(i) for i in range(-(-len(rows) // batch))]
    mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
    model, ref = pretrain.load_params(config, workdirs[0], mesh)
    eval_fn = per_scene_eval(model, eval_cfg)
    target = pretrain.params_target(config, mesh)

    def score(params) -> dict:
        parts = [jax.device_get(eval_fn(params, b, ref)) for b in batches]
        sums = {name: np.concatenate([p[name][0] for p in parts])[:len(rows)] for name in parts[0]}
        counts = {name: np.concatenate([p[name][1] for p in parts])[:len(rows)] for name in parts[0]}
        out = {name: float(sums[name].sum() / counts[name].sum()) for name in sums}
        out["pairs"] = int(counts["pref_accuracy"].sum())
        out["accuracy_per_scene"] = (sums["pref_accuracy"] / counts["pref_accuracy"]).tolist()
        return out

    models = {"reference": score(ref)}
    print(f"reference: {models['reference']['pref_accuracy']:.4f}", flush=True)
    for w in workdirs:
        for method, folder in align.finished_folders(w).items():
            params = checkpointing.restore_params(wd.stage_dir(w, folder) / "checkpoints", target)
            name = f"{w}/{method}"
            models[name] = score(params)
            print(f"{name}: {models[name]['pref_accuracy']:.4f}", flush=True)
    store.close()
    return {"pairs_from": pairs_from, "rows": rows_text, "scenes": len(rows), "pairs_per_scene": k,
            "models": models}


def combine(results: list[dict], files: list[str]) -> dict:
    """Several seeds' results (one workdir each, the same rankings) per method, with two-level paired intervals."""
    if len({(r["pairs_from"], r["rows"]) for r in results}) != 1:
        raise SystemExit("preference_accuracy --combine: the files scored different rankings")
    per_method: dict[str, list[list[float]]] = {}
    for r in results:
        for name, m in r["models"].items():
            if name != "reference":
                per_method.setdefault(name.rsplit("/", 1)[1], []).append(m["accuracy_per_scene"])
    ref = np.asarray([r["models"]["reference"]["accuracy_per_scene"] for r in results])
    out = {"reference": {"pref_accuracy": float(ref.mean())}}
    for method, rows in per_method.items():
        a = np.asarray(rows)
        if a.shape != ref.shape:
            raise SystemExit(f"preference_accuracy --combine: {method} is in {len(rows)} of {len(results)} files")
        out[method] = {"pref_accuracy": float(a.mean()), "per_seed": a.mean(1).tolist(),
                       "vs_reference": stats.two_level_paired_difference(a, ref)}
    if "dpa_omf" in per_method:
        d = np.asarray(per_method["dpa_omf"])
        for method, rows in per_method.items():
            if method != "dpa_omf":
                out[method]["vs_dpa_omf"] = stats.two_level_paired_difference(np.asarray(rows), d)
    return {"files": files, "scenes": results[0]["scenes"], "pairs_per_scene": results[0]["pairs_per_scene"],
            "methods": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dpa_omf.tools.preference_accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs_from")
    p.add_argument("--rows", help="the rankings of --pairs_from to score, a:b")
    p.add_argument("--workdir", action="append")
    p.add_argument("--combine", action="append", help="a result file of one seed (several: one table)")
    p.add_argument("--out", required=True)
    p.add_argument("--variant", default=None)
    p.add_argument("--batch", type=int, default=4, help="scenes per step")
    a = p.parse_args(argv)
    if a.combine:
        result = combine([json.loads(pathlib.Path(f).read_text()) for f in a.combine], a.combine)
        atomic.write_json(a.out, result)
        json.dump({n: round(m["pref_accuracy"], 4) for n, m in result["methods"].items()}, sys.stdout, indent=1)
        return 0
    if not (a.pairs_from and a.rows and a.workdir):
        p.error("--pairs_from, --rows and --workdir are needed (or --combine)")
    result = accuracy(align_config.get_config(a.variant), a.pairs_from, a.rows, a.workdir, a.batch)
    atomic.write_json(a.out, result)
    json.dump({n: round(m["pref_accuracy"], 4) for n, m in result["models"].items()}, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
