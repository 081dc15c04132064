"""WOSAC submission protos: official file round trip, sharded writer, checks."""

import tarfile

import numpy as np
import pytest
from test_realism import scenario_from_golden_arrays

from dpa_omf import datatypes as dt
from dpa_omf.metrics import submission as S

META = S.SubmissionMetadata(account_name="someone@example.com", unique_method_name="dpa_omf_test",
                            authors=("A", "B"), num_model_parameters="1M")


@pytest.mark.shared
def test_reads_official_test_submission_byte_exact(shared_dir):
    path = shared_dir / "womd" / "test_submission.binproto"
    sub = S.read_submission(path)
    assert sub.submission_type == S.SUBMISSION_TYPE_SIM_AGENTS
    assert len(sub.scenario_rollouts) == 1
    ro = sub.scenario_rollouts[0]
    assert ro.scenario_id == "637f20cafde22ff8" and len(ro.joint_scenes) == 32
    # Same schema, same wire format: re-serializing gives the file back.
    assert sub.SerializeToString() == path.read_bytes()
    arr = S.rollouts_to_arrays(ro)
    golden = np.load(shared_dir / "golden" / "wosac" / "submission" / "rollouts.npz")
    for k in golden.files:
        np.testing.assert_array_equal(arr[k], golden[k], err_msg=k)
    S.validate_scenario_rollouts(ro, scenario_from_golden_arrays(shared_dir / "golden" / "wosac"))


def _tiny():
    s = dt.empty_scenario(4, 8)
    a = s.agents
    a.valid[:3, :] = True
    a.id[:3] = [7, 8, 9]
    a.sim_mask[:3] = True
    return s.replace(scenario_id=dt.scenario_id_to_bytes("abc123"))


def test_sharded_round_trip_and_package(tmp_path, rng):
    msgs, arrays = [], []
    for k in range(5):
        xyzh = rng.normal(size=(32, 3, 80, 4)).astype(np.float32)
        ids = np.array([7, 8, 9]) + 10 * k
        msgs.append(S.scenario_rollouts(f"scene{k}", ids, *(xyzh[..., i] for i in range(4))))
        arrays.append((ids, xyzh))
    paths = S.write_submission(tmp_path, msgs, META, scenes_per_shard=3)
    assert [p.name for p in paths] == ["submission.binproto-00000-of-00002", "submission.binproto-00001-of-00002"]
    shard0 = S.read_submission(paths[0])
    # The submit job's sharding: contiguous blocks of balanced sizes.
    assert [m.scenario_id for m in shard0.scenario_rollouts] == ["scene0", "scene1"]
    assert [m.scenario_id for m in S.read_submission(paths[1]).scenario_rollouts] == ["scene2", "scene3", "scene4"]
    assert shard0.unique_method_name == "dpa_omf_test" and list(shard0.authors) == ["A", "B"]
    assert shard0.acknowledge_complies_with_closed_loop_requirement
    merged = S.read_submission(paths)
    by_id = {m.scenario_id: m for m in merged.scenario_rollouts}
    assert sorted(by_id) == [f"scene{k}" for k in range(5)]
    for k, (ids, xyzh) in enumerate(arrays):
        back = S.rollouts_to_arrays(by_id[f"scene{k}"])
        np.testing.assert_array_equal(back["object_id"], ids)
        np.testing.assert_array_equal(back["heading"], xyzh[..., 3])
    tar = S.package_submission(paths, tmp_path / "submission.tar.gz")
    with tarfile.open(tar) as t:
        assert sorted(t.getnames()) == [p.name for p in paths]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_rollouts_from_slots_and_validation():
    s = _tiny()
    sim = np.zeros((32, 4, 80, 4), np.float32)
    sim[..., 0] = np.arange(4)[None, :, None]
    msg = S.rollouts_from_slots(s, sim)
    S.validate_scenario_rollouts(msg, s)
    arr = S.rollouts_to_arrays(msg)
    np.testing.assert_array_equal(arr["object_id"], [7, 8, 9])
    np.testing.assert_array_equal(arr["x"][0, :, 0], [0, 1, 2])
    bad = S.ScenarioRollouts()
    bad.CopyFrom(msg)
    del bad.joint_scenes[3].simulated_trajectories[1]
    with pytest.raises(ValueError, match="missing \\[8\\]"):
        S.validate_scenario_rollouts(bad, s)
    bad.CopyFrom(msg)
    del bad.joint_scenes[0].simulated_trajectories[0].heading[-1]
    with pytest.raises(ValueError, match="80 finite values"):
        S.validate_scenario_rollouts(bad, s)
    bad.CopyFrom(msg)
    del bad.joint_scenes[31]
    with pytest.raises(ValueError, match="31 joint scenes"):
        S.validate_scenario_rollouts(bad, s)


def test_bad_inputs_refused(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        S.scenario_rollouts("s", [1], *(np.full((32, 1, 80), np.nan),) * 4)
    with pytest.raises(ValueError, match="num_model_parameters"):
        S.SubmissionMetadata(account_name="a", unique_method_name="m", num_model_parameters="lots")
    p = tmp_path / "junk.binproto"
    p.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match=r"junk\.binproto"):
        S.read_submission(p)
    msg = S.scenario_rollouts("s", [1], *(np.zeros((32, 1, 80)),) * 4)
    with pytest.raises(ValueError, match="given twice"):
        S.write_submission(tmp_path, [msg, msg], META, scenes_per_shard=1)


def test_parameter_count_label():
    assert S.parameter_count_label(1_048_233) == "1.05M"
    assert S.parameter_count_label(47_900) == "47.9K"
    assert S.parameter_count_label(500) == "0.5K"
    assert S.parameter_count_label(7_000_000_000) == "7B"
    for n in (1, 999_999, 123_456_789_012):
        S.SubmissionMetadata(account_name="a", unique_method_name="m", num_model_parameters=S.parameter_count_label(n))


def test_write_shard_names_and_writes_one_shard(tmp_path, rng):
    xyzh = rng.normal(size=(32, 3, 80, 4)).astype(np.float32)
    msg = S.scenario_rollouts("scene0", np.array([7, 8, 9]), *(xyzh[..., i] for i in range(4)))
    path = S.write_shard(tmp_path / "out" / S.shard_name(1, 3), [msg], META)
    assert path.name == "submission.binproto-00001-of-00003"
    back = S.read_submission(path)
    assert back.account_name == META.account_name and [m.scenario_id for m in back.scenario_rollouts] == ["scene0"]
    with pytest.raises(ValueError, match="shard index 3"):
        S.shard_name(3, 3)
