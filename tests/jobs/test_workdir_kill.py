"""The real main job (``configs/align.py:smoke``) against the accidents of issue 24, end to end (slow: two
runs of the main job, five restarts and four reruns that reuse every stage).

- Two launches at once on a new workdir: one runs, the other is refused at once (exit 2, one line).
- SIGKILL in every stage, each followed by the same command: the shards and the realism table are
  byte-identical to an uninterrupted run's (the behaviour to keep).
- Damage to a finished workdir (a truncated checkpoint file, a deleted shard, a corrupt summary): the same
  command is refused in one line naming the file (and the restart flag); mended, every stage is reused.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MAIN = ["--config=configs/align.py:smoke"]
STAGES = ("data", "pretrain", "curate", "align", "evaluate")
# Seconds after "[stage] running" at which the kill comes: short enough to land inside the stage even when the
# shared compilation cache makes the later runs fast (each kill is checked to have left its stage unfinished).
KILL_AFTER = {"data": 1, "pretrain": 3, "curate": 3, "align": 3, "evaluate": 1}


def _launch(workdir: pathlib.Path, cache: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)  # one CPU device, like a user's run
    return subprocess.Popen([sys.executable, "-m", "dpa_omf.launch", *MAIN, *extra, f"--workdir={workdir}",
                             f"--compilation_cache={cache}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 1500) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def _table(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("|")]


def _shards(workdir: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "curate").glob("shard-*.npz"))}


def _kill_in(p: subprocess.Popen, stage: str, root: pathlib.Path) -> bool:
    """SIGKILLs the job KILL_AFTER[stage] seconds after it starts running ``stage``; False if it never does, or if
    the stage had already finished (its summary lists its outputs) when the kill came."""
    for line in p.stderr:
        if line.startswith(f"[{stage}] running"):
            time.sleep(KILL_AFTER[stage])
            p.send_signal(signal.SIGKILL)
            p.wait()
            summary = root / stage / "summary.json"
            return not (summary.exists() and '"outputs"' in summary.read_text(errors="replace"))
    p.wait()
    return False


def _refused(p: subprocess.Popen, *needles: str) -> None:
    code, _, err = _finish(p, 600)
    fatal = [line for line in err.splitlines() if line.startswith("FATAL")]
    assert code == 2 and len(fatal) == 1 and all(n in fatal[0] for n in needles), err
    assert "Traceback" not in err


def _cache(tmp_path: pathlib.Path) -> str:
    """The test run's compilation cache (tests/conftest.py), or this test's own folder when the run has none:
    either way every launch after the first loads what earlier ones compiled, which KILL_AFTER allows for."""
    run = os.environ.get("DPA_OMF_COMPILATION_CACHE", "off")
    return str(tmp_path / "cache") if run.lower() == "off" else run


@pytest.mark.slow
def test_kills_races_and_damage_on_the_main_job(tmp_path):
    cache = _cache(tmp_path)
    reference = _launch(tmp_path / "reference", cache)
    code, ref_out, err = _finish(reference)
    assert code == 0, err
    assert _table(ref_out)

    # Two launches at once on a new workdir: exactly one is refused, at once.
    root = tmp_path / "killed"
    first, second = _launch(root, cache), _launch(root, cache)
    while first.poll() is None and second.poll() is None:
        time.sleep(0.2)
    refused, running = (first, second) if first.poll() is not None else (second, first)
    _refused(refused, f"--workdir={root} is in use by")

    # SIGKILL in every stage; the same command each time.
    assert _kill_in(running, "data", root)
    for stage in STAGES[1:]:
        assert _kill_in(_launch(root, cache), stage, root), stage
    code, out, err = _finish(_launch(root, cache))
    assert code == 0, err
    assert _table(out) == _table(ref_out)
    assert _shards(root) == _shards(tmp_path / "reference") and _shards(root)

    # Damage to the finished workdir is refused by name (the restart flag itself: test_workdir_safety.py).
    ckpt = max((p for p in (root / "pretrain" / "checkpoints").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    shard = sorted((root / "curate").glob("shard-*.npz"))[0]
    summary = root / "align" / "summary.json"
    for path, damage, needles in (
            (ckpt, lambda b: b[:len(b) // 2], ("bytes, the stage wrote", "--restart=pretrain")),
            (shard, None, ("is missing", "--restart=curate")),
            (summary, lambda b: b"\x00\xff" + b, ("is corrupt",))):
        kept = path.read_bytes()
        path.unlink()
        if damage is not None:
            path.write_bytes(damage(kept))
        _refused(_launch(root, cache), str(path), *needles)
        path.write_bytes(kept)
    code, out, err = _finish(_launch(root, cache))
    assert code == 0, err
    assert _table(out) == _table(ref_out)
    assert "running" not in err  # every stage reused, its outputs verified
