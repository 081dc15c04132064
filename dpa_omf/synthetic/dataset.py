"""The embedded synthetic world: one scene per seed, and datasets of them.

``generate_scenario(seed, config)`` builds one WOMD-like ``Scenario`` (numpy):

1. A map from ``synthetic.maps`` (straight / curved corridor, signalled 4-way
   intersection or T-junction), rotated and translated at random.
2. A two-group signal plan with a random cycle phase, so lights often change
   within the 9.1 s window (``synthetic.traffic.Signals``).
3. A pool of agents: vehicles and cyclists on lane routes, pedestrians on
   sidewalk lines, some present from the start, others entering later
   (``synthetic.traffic.build_pool``).
4. The expert simulates them, ``burn_in_steps`` before the 91 recorded steps
   (``synthetic.expert``); the first 11 recorded steps are the history.
5. The recorded agents (at most ``num_agents``, the spawning cap guarantees it),
   an SDC, agents to evaluate, road-graph samples fitted to ``max_roadgraph_points``,
   traffic-light slots, WOMD reader conventions (zeros at invalid entries).

``generate_dataset`` writes TFRecord shards through ``dpa_omf.io.example_writer``.
Neither imports JAX; ``synthetic.scene_stats`` (JAX) measures interactivity,
collisions and off-road steps of generated scenes.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from collections.abc import Callable

import numpy as np

from dpa_omf import atomic
from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer
from dpa_omf.synthetic import expert, traffic
from dpa_omf.synthetic import maps as smap
from dpa_omf.synthetic.config import DEFAULT_CONFIG, SyntheticConfig


# ============================================================== scenario assembly
def _ground(rng) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A gently sloped, wavy ground height z(x, y) (m)."""
    z0, gx, gy = rng.uniform(-20, 60), rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
    amp, kx, ky = rng.uniform(0, 0.5), rng.uniform(0.01, 0.04), rng.uniform(0.01, 0.04)
    return lambda x, y: z0 + gx * x + gy * y + amp * np.sin(kx * x) * np.cos(ky * y)


def _velocities(xy: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``[A, T, 2]`` central differences of positions (one-sided at track ends, zero alone)."""
    prev_ok = np.zeros_like(valid)
    prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
    next_ok = np.zeros_like(valid)
    next_ok[:, :-1] = valid[:, :-1] & valid[:, 1:]
    prev = np.concatenate([xy[:, :1], xy[:, :-1]], 1)
    nxt = np.concatenate([xy[:, 1:], xy[:, -1:]], 1)
    lo = np.where(prev_ok[..., None], prev, xy)
    hi = np.where(next_ok[..., None], nxt, xy)
    steps = prev_ok.astype(float) + next_ok.astype(float)
    return np.where(steps[..., None] > 0, (hi - lo) / np.maximum(steps, 1)[..., None] / dt.DT, 0.0)


def _select_eval(rng, keep_valid: np.ndarray, kinds: np.ndarray, xy: np.ndarray, sdc: int, man: np.ndarray,
                 k_max: int) -> np.ndarray:
    cur = dt.CURRENT_INDEX
    cand = keep_valid[:, cur] & (keep_valid[:, cur:].mean(1) >= 0.5)
    cand[sdc] = False
    moved = np.linalg.norm(xy[:, -1] - xy[:, cur], axis=-1)
    dist = np.linalg.norm(xy[:, cur] - xy[sdc, cur], axis=-1)
    score = np.where(kinds == traffic.KIND_VEH, 3.0, 1.5) * (1.0 + (moved > 5.0)) * (1.0 + (man != smap.STRAIGHT))
    score *= np.exp(-dist / 40.0)
    score = np.where(cand, score + 1e-6, 0.0)
    n = int(min(k_max, cand.sum()))
    ev = np.zeros(len(kinds), bool)
    if n:
        ev[rng.choice(len(kinds), n, replace=False, p=score / score.sum())] = True
    ev[sdc] = True
    return ev


def _choose_sdc(rng, valid: np.ndarray, kinds: np.ndarray, xy: np.ndarray, center: np.ndarray) -> int:
    cur = dt.CURRENT_INDEX
    full = valid.all(1) & (kinds == traffic.KIND_VEH)
    pool = full if full.any() else (valid[:, cur] & (kinds == traffic.KIND_VEH))
    if not pool.any():
        pool = valid[:, cur]
    dist = np.linalg.norm(xy[:, cur] - center, axis=-1)
    moved = np.linalg.norm(xy[:, -1] - xy[:, 0], axis=-1)
    score = np.where(pool, np.exp(-dist / 30.0) * (0.3 + (moved > 5.0)), 0.0) + pool * 1e-9
    return int(rng.choice(len(kinds), p=score / score.sum()))


def _agents(rng, pool: traffic.Pool, tr: expert.Track, ground, cfg: SyntheticConfig, center: np.ndarray):
    a = cfg.num_agents
    keep = np.nonzero(tr.valid.any(1))[0]
    if len(keep) > a:  # cannot happen with the spawning cap; guard anyway
        keep = keep[np.argsort(-tr.valid[keep].sum(1), kind="stable")[:a]]
    valid = tr.valid[keep].copy()
    xy = tr.xy[keep]
    kinds = pool.kind[keep]
    if not valid[:, dt.CURRENT_INDEX].any():
        raise RuntimeError("synthetic scene without an agent at the current step")
    sdc = _choose_sdc(rng, valid, kinds, xy, center)
    ev = _select_eval(rng, valid, kinds, xy, sdc, pool.maneuver[keep], cfg.max_eval_agents)
    # Order: SDC, then agents valid now by distance to the SDC, then the rest.
    dist = np.linalg.norm(xy[:, dt.CURRENT_INDEX] - xy[sdc, dt.CURRENT_INDEX], axis=-1)
    order = np.lexsort((dist, ~valid[:, dt.CURRENT_INDEX], np.arange(len(keep)) != sdc))
    keep, valid, xy, kinds, ev = keep[order], valid[order], xy[order], kinds[order], ev[order]
    _dropouts(rng, valid, ev, cfg.dropout_prob)
    vel = _velocities(xy, valid)
    speed = np.linalg.norm(vel, axis=-1)
    tan = tr.tan[keep]
    thresh = np.where(kinds == traffic.KIND_PED, 0.2, 0.5)[:, None]
    heading = np.where(speed > thresh, np.arctan2(vel[..., 1], vel[..., 0]), np.arctan2(tan[..., 1], tan[..., 0]))
    n = len(keep)
    out = dt.empty_scenario(a, 1).agents

    def f(x):  # zeros at invalid steps, float32
        return np.where(valid, x, 0.0).astype(np.float32)

    def size(x):  # per-agent constant over the steps
        return np.broadcast_to(x[keep][:, None], valid.shape)

    height = size(pool.height)
    fields = {"x": f(xy[..., 0]), "y": f(xy[..., 1]), "z": f(ground(xy[..., 0], xy[..., 1]) + height / 2),
              "heading": f(heading), "vel_x": f(vel[..., 0]), "vel_y": f(vel[..., 1]),
              "length": f(size(pool.length)), "width": f(size(pool.width)), "height": f(height)}
    for name, val in fields.items():
        getattr(out, name)[:n] = val
    out.valid[:n] = valid
    out.type[:n] = traffic.TYPE_OF_KIND[kinds]
    out.id[:n] = rng.permutation(np.arange(1, 10 * a + 1))[:n]
    out.is_sdc[:n] = np.arange(n) == 0
    out.sim_mask[:n] = valid[:, dt.CURRENT_INDEX]
    out.eval_mask[:n] = ev & valid[:, dt.CURRENT_INDEX]
    return out


def _dropouts(rng, valid: np.ndarray, protect: np.ndarray, prob: float) -> None:
    """Short track losses (occlusions), never at the current step nor for evaluated agents."""
    for i in np.nonzero((rng.random(len(valid)) < prob) & ~protect)[0]:
        steps = np.nonzero(valid[i])[0]
        if len(steps) < 20:
            continue
        length = int(rng.integers(2, 9))
        start = int(rng.integers(steps[0] + 1, steps[-1] - length))
        if start <= dt.CURRENT_INDEX < start + length + 1:
            continue
        valid[i, start:start + length] = False


def sample_roadgraph(m: smap.SceneMap, ground, cfg: SyntheticConfig) -> dt.RoadGraph:
    """Resamples every polyline at one spacing chosen so the samples fit ``max_roadgraph_points``."""
    lengths = np.array([smap.arc_length(p.xy)[-1] for p in m.polylines])
    order = np.argsort([np.linalg.norm(p.xy.mean(0) - m.center) for p in m.polylines], kind="stable")
    spacing = max(cfg.min_roadgraph_spacing, lengths.sum() / max(cfg.max_roadgraph_points - 2 * len(lengths), 1))
    while True:
        # floor: samples are never closer than ``spacing`` (except 2-point stubs)
        counts = np.maximum(2, np.floor(lengths / spacing).astype(int) + 1)
        if counts.sum() <= cfg.max_roadgraph_points:
            break
        spacing *= 1.05
    rg = dt.empty_scenario(1, cfg.max_roadgraph_points).roadgraph
    at = 0
    for i in order:
        pl = m.polylines[i]
        xy = smap.resample_count(pl.xy, counts[i])
        nn = len(xy)
        z = ground(xy[:, 0], xy[:, 1])
        xyz = np.concatenate([xy, z[:, None]], 1)
        direc = np.zeros_like(xyz)
        step = np.diff(xyz, axis=0)
        direc[:-1] = step / np.maximum(np.linalg.norm(step, axis=-1, keepdims=True), 1e-9)
        rg.xyz[at:at + nn], rg.dir[at:at + nn] = xyz, direc
        rg.type[at:at + nn], rg.id[at:at + nn], rg.valid[at:at + nn] = pl.type, pl.id, True
        at += nn
    return rg


def _lights(m: smap.SceneMap, sig: traffic.Signals | None, ground, cfg: SyntheticConfig) -> dt.TrafficLights:
    tl = dt.empty_scenario(1, 1).traffic_lights
    if sig is None:
        return tl
    t = (cfg.burn_in_steps + np.arange(dt.NUM_STEPS)) * dt.DT
    states = sig.states(t)  # [91, 2]
    for k, lt in enumerate(m.lights[: dt.NUM_TRAFFIC_LIGHTS]):
        tl.state[:, k] = states[:, m.arm_group[lt.arm]]
        tl.lane_id[:, k] = lt.lane_id
        tl.stop_point[:, k] = (lt.stop_xy[0], lt.stop_xy[1], ground(lt.stop_xy[0], lt.stop_xy[1]))
        tl.valid[:, k] = True
    return tl


def generate_scenario(seed: int, config: SyntheticConfig = DEFAULT_CONFIG) -> dt.Scenario:
    """One synthetic scene, a pure function of ``(seed, config)``.

    Returns a numpy ``Scenario`` with ``[num_agents, 91]`` tracks, ``[max_roadgraph_points]``
    road-graph samples and ``[91, 16]`` traffic-light slots; id ``"syn" + seed``.
    """
    if not 0 <= seed < 10**13:
        raise ValueError(f"seed must be in [0, 1e13), got {seed}")
    rng = np.random.default_rng([seed, 0x5E17])
    w = np.asarray(config.template_weights, float)
    kind = smap.TEMPLATES[int(rng.choice(4, p=w / w.sum()))]
    m = smap.build_map(rng, kind, config.map)
    sig = None
    if m.lights:
        sig = traffic.Signals(green=rng.uniform(12.0, 30.0, size=2), offset=0.0)
        sig.offset = rng.uniform(0, sig.cycle)
    routes = traffic.route_tables([r.xy for r in m.vehicle_routes] + [r.xy for r in m.ped_routes])
    lane_width = min(r.lane_offset for r in m.vehicle_routes)
    total = config.burn_in_steps + dt.NUM_STEPS
    pool = traffic.build_pool(rng, m, routes, config, sig, total, lane_width)
    track = expert.Expert(pool, routes, m, sig, config).run()
    ground = _ground(rng)
    scen = dt.Scenario(agents=_agents(rng, pool, track, ground, config, m.center),
                       roadgraph=sample_roadgraph(m, ground, config), traffic_lights=_lights(m, sig, ground, config),
                       scenario_id=dt.scenario_id_to_bytes(f"syn{seed:013d}"))
    return scen.validate(f"synthetic seed {seed}")


# ============================================================== dataset
_MAX_SCENES_PER_SEED = 10**7


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of the dataset generated with ``seed`` (ids stay <= 16 chars)."""
    if not 0 <= seed < 10**6:
        raise ValueError(f"dataset seed must be in [0, 1e6), got {seed}")
    if not 0 <= index < _MAX_SCENES_PER_SEED:
        raise ValueError(f"scene index must be in [0, 1e7), got {index}")
    return seed * _MAX_SCENES_PER_SEED + index


def shard_path(out_dir: str, shard: int, num_shards: int) -> str:
    return os.path.join(out_dir, f"synthetic.tfrecord-{shard:05d}-of-{num_shards:05d}")


def _shard_ranges(num_scenes: int, num_shards: int) -> list[tuple[int, int]]:
    edges = [k * num_scenes // num_shards for k in range(num_shards + 1)]
    return [(edges[k], edges[k + 1]) for k in range(num_shards)]


def _write_shard(job: tuple) -> tuple[str, int]:
    """Worker: generates scenes ``[lo, hi)`` and writes one shard (spawn-safe, top level)."""
    path, seed, lo, hi, config = job
    n = example_writer.write_tfrecord(path, (generate_scenario(scene_seed(seed, i), config) for i in range(lo, hi)))
    return path, n


def generate_dataset(out_dir: str, num_scenes: int, num_shards: int, seed: int = 0,
                     config: SyntheticConfig = DEFAULT_CONFIG, num_workers: int | None = None) -> list[str]:
    """Generates ``num_scenes`` synthetic scenes into WOMD tf.Example TFRecord shards.

    Scene ``i`` is ``generate_scenario(scene_seed(seed, i), config)``; shard ``k``
    holds a contiguous range of scenes, so the files are identical whatever the
    number of workers. Each shard is written atomically; ``dataset_info.json``
    (written last) lists the shards, the seed and the config.

    Args:
      out_dir: output folder (created).
      num_scenes, num_shards: dataset size and number of files (1 <= shards <= scenes).
      seed: dataset seed in [0, 1e6).
      config: the world's ``SyntheticConfig``.
      num_workers: processes (spawned); default ``min(os.cpu_count(), num_shards)``.
    Returns:
      the shard paths, in order.
    """
    if num_scenes < 1 or not 1 <= num_shards <= num_scenes:
        raise ValueError(f"need 1 <= num_shards <= num_scenes, got {num_shards} shards, {num_scenes} scenes")
    scene_seed(seed, num_scenes - 1)  # range check before any work
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(shard_path(out_dir, k, num_shards), seed, lo, hi, config)
            for k, (lo, hi) in enumerate(_shard_ranges(num_scenes, num_shards))]
    workers = max(1, min(num_workers or os.cpu_count() or 1, num_shards))
    if workers == 1:
        done = [_write_shard(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            done = pool.map(_write_shard, jobs, chunksize=1)
    info = {"num_scenes": num_scenes, "num_shards": num_shards, "seed": seed,
            "shards": [os.path.basename(p) for p, _ in done], "records": [n for _, n in done],
            "config": dataclasses.asdict(config)}
    atomic.write_text(os.path.join(out_dir, "dataset_info.json"), json.dumps(info, indent=1))
    return [p for p, _ in done]

