"""``bench train``: scenes/s and tokens/s of the pretraining step (the loop's compiled step) on synthetic scenes.

    python -m dpa_omf.bench train --json OUT [--agents 32,128] [--batch 32:8,128:2] [--repeats 3] [--steps 1]

Per agent count: the first step (compilation included) is timed alone
(``compile_and_first_step_s``), then ``--repeats`` (>= 3) runs of ``--steps``
steps each (``timing.timed``, no further warm-up); per-step wall and CPU
seconds, medians reported. Peak memory is the process's maxrss so far (it grows
with the larger case). JSON: ``results`` (one record per agent count) and
``devices``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource

import jax
import ml_collections
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain
from dpa_omf.model import motion_lm as mlm
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.tools.bench import timing
from dpa_omf.train import loop


def _synthetic_scenes(config: ml_collections.ConfigDict, batch: int) -> dt.Scenario:
    """``batch`` synthetic scenes of the configured size (the data job's world, made in memory)."""
    syn = cfg_lib.synthetic_world(config)
    return dt.stack_scenarios([synthetic.generate_scenario(i, syn) for i in range(batch)])


def time_train_step(config: ml_collections.ConfigDict, num_agents: int, batch: int, repeats: int,
                    steps_per_repeat: int) -> dict:
    """Times the pretraining step (the loop's compiled step) on synthetic scenes of ``num_agents``."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.num_agents = num_agents
    c.pretrain.batch_size = batch
    c.mesh.data = -1
    model = mlm.MotionLM(cfg_lib.model(c))
    trainer = loop.Trainer(loop.Objective(pretrain.make_loss_fn(model), pretrain.make_init_fn(model, c)),
                           dataclasses.replace(cfg_lib.pretrain_train(c), progress_bar=False))
    scenes = _synthetic_scenes(c, batch)
    state = trainer.init()

    def steps(n: int) -> dict:
        nonlocal state
        for _ in range(n):
            state, metrics = trainer.step(state, scenes)
        return metrics

    first = timing.timed(lambda i: steps(1), 1, warmup=False)  # the warm-up, timed alone: compilation + one step
    valid_tokens = float(jax.device_get(first.output["valid_tokens"][0]))
    t = timing.timed(lambda i: steps(steps_per_repeat), repeats, warmup=False)
    times = [s / steps_per_repeat for s in t.seconds]
    step_s = float(np.median(times))
    return {
        "num_agents": num_agents, "batch": batch, "devices": trainer.mesh.size,
        "param_count": mlm.param_count(state.params), "compile_and_first_step_s": first.seconds[0],
        "step_s_median": step_s, "step_s_all": times, "scenes_per_s": batch / step_s,
        # CPU seconds of all threads per step: what a busy shared machine distorts least.
        "cpu_s_per_step_median": t.cpu_median_s / steps_per_repeat,
        "valid_tokens_per_step": valid_tokens, "tokens_per_s": valid_tokens / step_s,
        "token_slots_per_s": batch * num_agents * model.config.num_steps / step_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "device": jax.devices()[0].device_kind,
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="32,128", help="comma-separated agent counts")
    p.add_argument("--batch", default="32:8,128:2", help="agents:batch pairs (or one batch for all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after compilation (>= 3; median reported)")
    p.add_argument("--steps", type=int, default=1, help="train steps per timed run")
    p.add_argument("--config", default="", help="variant of configs/pretrain.py")


def run(args: argparse.Namespace) -> dict:
    """Scenes/s and tokens/s of the pretraining step (median of >= 3 runs after compilation)."""
    config = pretrain_config.get_config(args.config or None)
    per = dict(kv.split(":") for kv in args.batch.split(",")) if ":" in args.batch else {}
    results = []
    for a in (int(x) for x in args.agents.split(",")):
        batch = int(per.get(str(a), 8)) if per else int(args.batch)
        results.append(time_train_step(config, a, batch, max(args.repeats, 3), args.steps))
        print(json.dumps(results[-1]), flush=True)
    return {"results": results, "devices": [str(d) for d in jax.devices()]}
