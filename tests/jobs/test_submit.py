"""The submit job: a smoke submission end to end through the launcher, its shards, the process shares, resume,
and the refusals (too few agent slots, a wrong rollout count, no account name)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from dpa_omf import datatypes as dt
from dpa_omf.configs import submit as submit_config
from dpa_omf.io import reader
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import data as data_job
from dpa_omf.jobs import pretrain, stages, submit
from dpa_omf.jobs import workdir as wdir
from dpa_omf.metrics import submission

REPO = pathlib.Path(__file__).resolve().parents[2]
ACCOUNT = "someone@example.com"
FOLDER = "submit_reference"


def _config(**submit_overrides):
    c = submit_config.get_config("smoke,reference")
    c.submit.account_name = ACCOUNT
    for k, v in submit_overrides.items():
        c.submit[k] = v
    return c


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> pathlib.Path:
    """A workdir with the smoke submission of the smoke reference, made by the launcher (one device)."""
    wd = tmp_path_factory.mktemp("submit") / "wd"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/submit.py:smoke,reference",
                          f"--workdir={wd}", f"--config.submit.account_name={ACCOUNT}"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[submit_reference] shard 2/2" in out.stderr
    return wd


@pytest.mark.slow
def test_shards_hold_32_joint_scenes_of_exactly_the_sim_agents(submitted):
    out = submitted / FOLDER
    summary = json.loads((out / "summary.json").read_text())
    c = _config()
    assert summary["config_fingerprint"] == stages.fingerprint("submit", c, submitted)
    assert summary["num_scenarios"] == 4 and summary["num_shards"] == 2 and summary["num_rollouts"] == 32
    assert summary["metadata"]["account_name"] == ACCOUNT
    names = [submission.shard_name(k, 2) for k in range(2)]
    with tarfile.open(out / submit.TAR) as tar:
        assert sorted(tar.getnames()) == names
    cfg = cfg_lib.submit(c)
    want = {}
    for path in data_job.split_files(c, submitted, "valid"):
        for s in reader.read_scenes(path, cfg.reader):
            if len(want) < 4:
                sim = np.asarray(s.agents.sim_mask)
                want[dt.scenario_id_str(s.scenario_id)] = (s, sorted(np.asarray(s.agents.id)[sim]))
    got = {}
    for name in names:
        shard = submission.read_submission(out / "shards" / name)
        assert shard.account_name == ACCOUNT and shard.unique_method_name == "dpa_omf_reference"
        assert shard.num_model_parameters.endswith("K")
        assert len(shard.scenario_rollouts) == 2  # 4 scenarios in 2 contiguous shards
        got.update({m.scenario_id: m for m in shard.scenario_rollouts})
    assert list(got) == list(want)  # every scenario once, in file order
    for sid, msg in got.items():
        scenario, ids = want[sid]
        submission.validate_scenario_rollouts(msg, scenario)  # 32 scenes, exactly the sim agents, 80 finite steps
        arrays = submission.rollouts_to_arrays(msg)
        assert sorted(arrays["object_id"].tolist()) == ids
        assert arrays["x"].shape == (32, len(ids), 80) and np.isfinite(arrays["x"]).all()
        assert not np.allclose(arrays["x"][0], arrays["x"][1])  # 32 different joint samples
        slot = {int(i): j for j, i in enumerate(np.asarray(scenario.agents.id))}
        z_now = np.asarray(scenario.agents.z)[[slot[int(i)] for i in arrays["object_id"]], 10]
        np.testing.assert_allclose(arrays["z"], np.broadcast_to(z_now[None, :, None], arrays["z"].shape))


def test_process_shares_are_disjoint_and_cover_every_shard():
    plan = submission.shard_ranges(10, 3)
    assert [list(r) for r in plan] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    assert submission.shard_ranges(4, 100) == [range(0, 4)]
    for n in (1, 2, 3, 5):
        shares = [wdir.process_share(len(plan), p, n) for p in range(n)]
        flat = sorted(k for share in shares for k in share)
        assert flat == list(range(len(plan)))  # disjoint and covering: nothing written twice or missed
        assert all(k % n == p for p, share in enumerate(shares) for k in share)
    with pytest.raises(ValueError, match="no scenario"):
        submission.shard_ranges(0, 3)


@pytest.mark.slow
def test_rerun_skips_finished_shards_and_reuses_the_stage(submitted, tmp_path):
    wd = tmp_path / "wd"
    shutil.copytree(submitted, wd)
    out = wd / FOLDER
    first, second = (out / "shards" / submission.shard_name(k, 2) for k in range(2))
    kept = first.stat().st_mtime_ns, first.read_bytes()
    old_second = second.read_bytes()
    (out / "summary.json").unlink()
    second.unlink()  # as if the job stopped while writing shard 2
    c = _config()
    assert stages.ensure("submit", c, wd) == 0
    assert (first.stat().st_mtime_ns, first.read_bytes()) == kept  # skipped, not rewritten
    assert second.read_bytes() == old_second  # the keys depend on the seed and the scenario index only
    assert wdir.finished(wd, FOLDER, stages.fingerprint("submit", c, wd))
    assert stages.ensure("submit", c, wd) == 0  # finished: reused


@pytest.mark.slow
@pytest.mark.shared
def test_more_sim_agents_than_slots_is_refused_naming_the_scenario(submitted, tmp_path, shared_dir):
    wd = tmp_path / "wd"
    shutil.copytree(submitted, wd)
    path = shared_dir / "womd" / "motion_data_one_scenario.tfrecord"  # 50 agents valid at the current step
    c = _config(scenario_pattern=str(path), num_agents=40)
    with pytest.raises(reader.DataError, match=r"50 valid at the current step.*40 agent slots.*637f20cafde22ff8"):
        submit.run(c, str(wd), "fp")
    assert not list((wd / FOLDER / "shards").glob("*-of-00001"))


def test_the_config_is_checked_before_any_compute():
    cfg_lib.check(_config())
    for edit, message in [
        (lambda c: setattr(c.submit, "num_rollouts", 16), "exactly 32"),
        (lambda c: setattr(c.submit, "account_name", ""), "submit.account_name is empty"),
        (lambda c: setattr(c.submit, "model", "afd"), "needs its alignment stage"),
        (lambda c: setattr(c.submit, "model", "nope"), "is not 'reference'"),
        (lambda c: setattr(c.submit, "num_model_parameters", "lots"), "num_model_parameters"),
    ]:
        c = _config()
        edit(c)
        with pytest.raises(ValueError, match=message):
            stages.check(c)  # the boundary with the registries' rules (method names: align.check)
    afd = submit_config.get_config("smoke,afd")
    assert afd.align.method == "afd" and afd.submit.model == "afd"
    assert stages.GRAPH["submit"].needs_of(afd) == ("pretrain", "align")
    assert stages.GRAPH["submit"].folder_of(afd) == "submit_afd"
    assert stages.GRAPH["submit"].needs_of(_config()) == ("pretrain",)
    assert "pretrained by next-token prediction; no preference alignment" in cfg_lib.submit(
        _config()).submission_metadata(10).description


def test_parameters_do_not_depend_on_the_agent_slots():
    """The 32-slot packaged reference can simulate WOMD's 128 slots (submit.num_agents)."""
    shapes = {}
    for n in (16, 32, 128):
        c = submit_config.get_config("reference")
        c.data.num_agents = n
        shapes[n] = jax.tree.map(lambda s: (s.shape, s.dtype), pretrain.abstract_params(c))
    assert shapes[16] == shapes[32] == shapes[128]
