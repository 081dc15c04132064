"""Input pipeline: sharding, shuffling, resumable state, padding, mixed formats."""


import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, pipeline, prepared, tfrecord
from dpa_omf.io.tfrecord import DataError
from dpa_omf.testing.womd import random_scenario, tree_equal

NUM_FILES, PER_FILE = 3, 5
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 files x 5 scenes with 10-20 agents and 150-300 road-graph samples (ragged sizes)."""
    rng = np.random.default_rng(42)
    folder = tmp_path_factory.mktemp("shards")
    scenes = {}
    for f in range(NUM_FILES):
        batch = []
        for i in range(PER_FILE):
            sid = f"f{f}-r{i}"
            s = random_scenario(rng, int(rng.integers(10, 21)), int(rng.integers(150, 301)), sid)
            scenes[sid] = s
            batch.append(s)
        example_writer.write_tfrecord(folder / f"part-{f}.tfrecord", batch)
    return folder, scenes


def config(folder, **kw):
    base = dict(file_patterns=(str(folder / "part-*.tfrecord"),), batch_size=4, max_agents=24,
                max_roadgraph_points=320, seed=7, prefetch=0)
    return pipeline.PipelineConfig(**{**base, **kw})


def ids(batch) -> list[str]:
    return [dt.scenario_id_str(x) for x in batch.scenario_id]


def take(p, n):
    return [next(p) for _ in range(n)]


def test_fixed_shapes_and_padding(shards):
    folder, scenes = shards
    p = pipeline.ScenarioPipeline(config(folder), 0, 1)
    batch = next(p)
    assert batch.agents.valid.shape == (4, 24, dt.NUM_STEPS)
    assert batch.roadgraph.valid.shape == (4, 320)
    assert batch.traffic_lights.valid.shape == (4, dt.NUM_STEPS, dt.NUM_TRAFFIC_LIGHTS)
    assert batch.scenario_id.shape == (4, dt.SCENARIO_ID_BYTES)
    for k, sid in enumerate(ids(batch)):
        ref = scenes[sid]
        a = ref.num_agents
        got = jax.tree.map(lambda x, k=k: x[k], batch)
        np.testing.assert_array_equal(got.agents.x[:a], ref.agents.x)
        assert not got.agents.valid[a:].any() and (got.agents.id[a:] == -1).all()
        n = int(ref.roadgraph.valid.sum())  # random scenes keep their valid samples first
        np.testing.assert_array_equal(got.roadgraph.xyz[:n], ref.roadgraph.xyz[:n])
        assert not got.roadgraph.valid[n:].any()
        got.validate()


def test_epoch_covers_every_record_once_and_shards_are_disjoint(shards):
    folder, _scenes = shards
    seen = []
    for pi in range(2):
        p = pipeline.ScenarioPipeline(config(folder, batch_size=1, num_epochs=1), pi, 2)
        assert p.records_per_process == 7 and p.num_batches == 7
        mine = [i for b in p for i in ids(b)]
        assert len(mine) == len(set(mine)) == 7
        seen.append(set(mine))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 14  # 15 records, 2 processes: one left out so both yield 7


def test_deterministic_order_and_new_order_per_epoch(shards):
    folder, _ = shards
    order = lambda **kw: [ids(b) for b in take(pipeline.ScenarioPipeline(config(folder, **kw), 0, 1), 6)]
    first = order()
    assert first == order()
    assert first != order(seed=8)
    flat = [i for b in first for i in b]
    assert len(set(flat[:15])) == 15  # epoch 1: every record once
    assert flat[:9] != flat[15:24]  # epoch 2 is reshuffled
    plain = [i for b in order(shuffle=False) for i in b]
    assert plain[:15] == [f"f{f}-r{i}" for f in range(NUM_FILES) for i in range(PER_FILE)]


def test_resume_from_state_gives_the_same_batches(shards):
    folder, _ = shards
    for prefetch in (0, 2):
        cfg = config(folder, prefetch=prefetch)
        p = pipeline.ScenarioPipeline(cfg, 1, 2)
        take(p, 3)
        state = p.get_state()
        expected = take(p, 5)  # crosses epoch boundaries (7 records per process per epoch)
        q = pipeline.ScenarioPipeline(cfg, 1, 2)
        q.set_state(state)
        assert all(tree_equal(a, b) for a, b in zip(take(q, 5), expected, strict=True))
        r = pipeline.ScenarioPipeline(cfg, 1, 2)
        r.skip(3)
        assert tree_equal(next(r), expected[0])
        for it in (p, q, r):
            it.close()


@pytest.fixture(scope="module")
def prepared_shards(shards, tmp_path_factory):
    """The shards prepared for ``config``'s slots (what the prepare stage writes)."""
    folder, _ = shards
    out = tmp_path_factory.mktemp("prepared")
    for f in sorted(folder.glob("part-*.tfrecord")):
        prepared.prepare_file(str(f), str(out / prepared.prepared_name(str(f))), config(folder).reader)
    return out


def test_prepared_files_give_the_raw_batches(shards, prepared_shards):
    folder, _ = shards
    prepared_pattern = (str(prepared_shards / f"part-*{prepared.SUFFIX}"),)
    for pi, n in ((0, 1), (1, 2)):
        raw = pipeline.ScenarioPipeline(config(folder), pi, n)
        ready = pipeline.ScenarioPipeline(config(folder, file_patterns=prepared_pattern), pi, n)
        assert ready.prepared and not raw.prepared
        assert all(tree_equal(a, b) for a, b in zip(take(raw, 6), take(ready, 6), strict=True))


@pytest.mark.slow  # spawning 2 grain workers (each imports jax) takes ~15 s on 2 shared cores
def test_worker_processes_give_the_same_batches(shards, prepared_shards):
    folder, _ = shards
    for patterns in ((str(prepared_shards / f"part-*{prepared.SUFFIX}"),),):
        inline = pipeline.ScenarioPipeline(config(folder, file_patterns=patterns), 1, 2)
        inline.skip(2)
        workers = pipeline.ScenarioPipeline(config(folder, file_patterns=patterns, num_workers=2, prefetch=2), 1, 2)
        workers.skip(2)
        expected = take(inline, 5)
        got = take(workers, 5)
        workers.close()
        assert all(tree_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_prepared_batches_resume_by_step_and_need_no_tensorflow(prepared_shards):
    """In a fresh process where TensorFlow cannot be imported: batch k after skip(k) is batch k of a full run."""
    code = f"""
import sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
from dpa_omf.io import pipeline
from dpa_omf.testing.womd import tree_equal
cfg = pipeline.PipelineConfig(file_patterns=({str(prepared_shards / "part-*.scenes")!r},), batch_size=4,
                              max_agents=24, max_roadgraph_points=320, seed=7, prefetch=2)
full = pipeline.ScenarioPipeline(cfg, 1, 2)
batches = [next(full) for _ in range(8)]
resumed = pipeline.ScenarioPipeline(cfg, 1, 2)
resumed.skip(3)
assert all(tree_equal(next(resumed), b) for b in batches[3:])
"""
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_mixed_raw_and_prepared_files_are_refused(shards, prepared_shards):
    folder, _ = shards
    patterns = (str(folder / "part-0.tfrecord"), str(prepared_shards / f"part-1.tfrecord{prepared.SUFFIX}"))
    with pytest.raises(ValueError, match="mix prepared"):
        pipeline.ScenarioPipeline(config(folder, file_patterns=patterns), 0, 1)


def test_state_refuses_other_settings(shards):
    folder, _ = shards
    state = pipeline.ScenarioPipeline(config(folder), 0, 1).get_state()
    with pytest.raises(ValueError, match="seed was 7, is now 8"):
        pipeline.ScenarioPipeline(config(folder, seed=8), 0, 1).set_state(state)


def test_finite_epochs_and_remainder(shards):
    folder, _ = shards
    p = pipeline.ScenarioPipeline(config(folder, num_epochs=2), 0, 1)
    assert len(list(p)) == 30 // 4 == p.num_batches
    p = pipeline.ScenarioPipeline(config(folder, num_epochs=1, drop_remainder=False), 0, 1)
    sizes = [b.agents.valid.shape[0] for b in p]
    assert sizes == [4, 4, 4, 3]


def test_errors_propagate_with_record(shards, tmp_path):
    folder, _ = shards
    raw = bytearray((folder / "part-1.tfrecord").read_bytes())
    raw[tfrecord.index_records(folder / "part-1.tfrecord")[3] + 40] ^= 0x10
    (tmp_path / "part-1.tfrecord").write_bytes(bytes(raw))
    cfg = config(tmp_path, shuffle=False, batch_size=2, prefetch=2)
    p = pipeline.ScenarioPipeline(cfg, 0, 1)
    next(p)
    with pytest.raises(DataError, match=r"part-1\.tfrecord: record 3: corrupted record"):
        next(p)


def test_bad_configs(shards):
    folder, _ = shards
    with pytest.raises(FileNotFoundError, match="no file matches"):
        pipeline.ScenarioPipeline(config(folder, file_patterns=(str(folder / "nothing-*"),)), 0, 1)
    with pytest.raises(ValueError, match="not one string"):
        pipeline.PipelineConfig(file_patterns="a/*.tfrecord")
    with pytest.raises(ValueError, match="cannot feed"):
        pipeline.ScenarioPipeline(config(folder), 0, 16)
    with pytest.raises(DataError, match="agents must be kept"):  # scenes have up to 15 agents valid now
        next(pipeline.ScenarioPipeline(config(folder, max_agents=4), 0, 1))


def test_default_process_sharding_uses_jax(shards):
    folder, _ = shards
    p = pipeline.ScenarioPipeline(config(folder))
    assert (p.process_index, p.process_count) == (jax.process_index(), jax.process_count())


@pytest.mark.shared
def test_mixed_formats(shared_dir):
    cfg = pipeline.PipelineConfig(file_patterns=(str(shared_dir / "womd/*.tfrecord"),), batch_size=3,
                                  max_agents=128, max_roadgraph_points=30_000, shuffle=False, num_epochs=1,
                                  prefetch=0)
    batch, = list(pipeline.ScenarioPipeline(cfg, 0, 1))
    assert ids(batch) == ["a3bb37c25ce56418", "637f20cafde22ff8", "ee519cf571686d19"]
    assert batch.roadgraph.valid.sum(-1).tolist() == [20_000, 19_643, 9_267]
    batch.validate()
