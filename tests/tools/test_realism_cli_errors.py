"""Bad inputs to the realism command line end in one line and exit code 2 (issue 24), not a traceback."""

import numpy as np
import pytest

from dpa_omf.tools import realism_cli


def _main(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        realism_cli.main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_missing_scenario_file_is_one_line(tmp_path, capsys):
    err = _main(capsys, "--scenario", str(tmp_path / "none.tfrecord"), "--rollouts", str(tmp_path / "r.npz"))
    assert "realism_cli" in err and str(tmp_path / "none.tfrecord") in err


def test_a_corrupt_scenario_file_names_it(tmp_path, capsys):
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    assert str(path) in _main(capsys, "--scenario", str(path), "--rollouts", str(tmp_path / "r.npz"))


@pytest.mark.shared
@pytest.mark.parametrize("rollouts", ["missing", "not_npz", "missing_arrays", "wrong_shape"])
def test_bad_rollouts_are_one_line(shared_dir, tmp_path, capsys, rollouts):
    path = tmp_path / "r.npz"
    if rollouts == "not_npz":
        path.write_bytes(b"PK\x03\x04 truncated")
    elif rollouts == "missing_arrays":
        np.savez(path, x=np.zeros((2, 3, 80)))
    elif rollouts == "wrong_shape":
        np.savez(path, **{k: np.zeros((2, 3, 7)) for k in ("x", "y", "z", "heading")}, object_id=np.arange(3))
    scenario = shared_dir / "womd" / "motion_data_one_scenario.tfrecord"
    assert str(path) in _main(capsys, "--scenario", str(scenario), "--rollouts", str(path))


def test_verbosity_1_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        realism_cli.main(["--scenario", str(tmp_path / "none"), "--rollouts", "r.npz", "--verbosity=1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("realism_cli")
