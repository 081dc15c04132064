"""The config files and the one config boundary (dpa_omf/jobs/config.py): variants, checks before
compute, the locked config, dataclass defaults that agree with the configs."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.configs import common
from dpa_omf.configs import data as data_config
from dpa_omf.configs import pretrain as pretrain_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import stages
from dpa_omf.model import encoder as enc
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import tokenizer as tok
from dpa_omf.train import loop, optim, sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("variant", [None, "smoke", "womd"])
def test_every_variant_passes_its_checks(variant):
    c = pretrain_config.get_config(variant)
    cfg_lib.check(c)
    cfg_lib.check(c, num_devices=8, process_count=2)
    assert c.job == "pretrain"
    assert data_config.get_config(variant).job == "data"


def test_variants():
    smoke, womd, default = (pretrain_config.get_config(v) for v in ("smoke", "womd", None))
    assert womd.data.num_agents == 128 and womd.data.source == "womd"
    assert smoke.pretrain.num_steps < 10 and smoke.model.d_model < default.model.d_model
    with pytest.raises(ValueError, match="unknown config variant"):
        pretrain_config.get_config("smok")


def test_sections_mirror_the_dataclasses_field_by_field():
    """A field added to a dataclass must get a config entry (and the reverse), or this fails."""
    c = pretrain_config.get_config()
    names = lambda cls: {f.name for f in dataclasses.fields(cls)}
    assert set(c.tokenizer.keys()) == names(tok.TokenizerConfig)
    assert set(c.model.keys()) == names(mlm.ModelConfig) - {"tokenizer"}
    assert set(c.model.encoder.keys()) == names(enc.EncoderConfig)
    assert set(c.pretrain.optim.keys()) == names(optim.OptimConfig)
    # The default config is the dataclasses' defaults (one source of truth for the default run).
    assert cfg_lib.tokenizer(c) == tok.TokenizerConfig()
    assert cfg_lib.model(c) == mlm.ModelConfig()
    assert cfg_lib.mesh(c) == sharding.MeshConfig()
    tc = cfg_lib.pretrain_train(c)
    assert isinstance(tc, loop.TrainConfig) and tc.num_steps == c.pretrain.num_steps
    tc.validate()
    assert cfg_lib.model(pretrain_config.get_config("womd")).compute_dtype == "bfloat16"


# Built dataclasses whose defaults cannot mirror this section, and why.
NOT_MIRRORED = {
    "data": "ReaderConfig's defaults (None) mean 'the record's own sizes' for tools that read any file",
    "align.optim": "TrainConfig / OptimConfig defaults mirror the pretrain section; align sets its own",
    "evaluate.rollout": "RolloutConfig's defaults mirror the curate section (64 rollouts); evaluate takes 32",
    "submit.rollout": "RolloutConfig's defaults mirror the curate section (64 rollouts); the challenge takes 32",
    "submit.reader": "ReaderConfig's defaults (None) mean 'the record's own sizes'; submit sets the slots",
}


def _disagreements(x, path: str) -> list[str]:
    out = []
    for f in dataclasses.fields(x):
        v = getattr(x, f.name)
        sub = f"{path}.{f.name}"
        if sub in NOT_MIRRORED:
            continue
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out += _disagreements(v, sub)
        elif f.default is not dataclasses.MISSING and f.default != v:
            out.append(f"{sub}: dataclass default {f.default!r} != config {v!r}")
    return out


def test_every_dataclass_default_agrees_with_the_default_config():
    """Every default lives in configs/: a dataclass default that disagrees with the config is a second,
    silently different default (e.g. a test or a tool building OptimConfig() would train differently)."""
    c = align_config.get_config()
    problems = []
    for section, build in cfg_lib.BUILDERS.items():
        if section not in NOT_MIRRORED:
            problems += _disagreements(build(c), section)
    assert not problems, "\n".join(problems)


def _dataclasses_in(x, out: set) -> set:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        out.add(type(x))
        for f in dataclasses.fields(x):
            _dataclasses_in(getattr(x, f.name), out)
    elif isinstance(x, tuple):
        for v in x:
            _dataclasses_in(v, out)
    return out


# Every dataclass a job gets from the boundary, built from the default config.
JOB_BUILDERS = {**cfg_lib.BUILDERS,
                "pipeline": lambda c: cfg_lib.pipeline(c, ("train-*",), True, 1),
                "online_curation": lambda c: cfg_lib.online_curation(c, 1)[0]}


@pytest.mark.parametrize("variant", [None, "smoke", "womd"])
def test_the_boundary_sets_every_field_from_the_config(variant, monkeypatch):
    """No job runs on a silent dataclass default: every field of every dataclass the boundary builds is passed
    explicitly (so its value is the config's, shown by --print_config), never left to the dataclass."""
    c = align_config.get_config(variant)
    classes = set()
    for build in JOB_BUILDERS.values():
        _dataclasses_in(build(c), classes)
    calls = []
    for cls in classes:
        names = [f.name for f in dataclasses.fields(cls) if f.init]

        def init(self, *args, _init=cls.__init__, _names=tuple(names), _cls=cls, **kwargs):
            calls.append((_cls.__name__, set(_names) - set(_names[:len(args)]) - set(kwargs)))
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
    unset = []
    for section, build in JOB_BUILDERS.items():
        calls.clear()
        build(c)
        unset += [f"{section}: {name}.{sorted(missing)}" for name, missing in calls if missing]
    assert len(classes) >= 15 and not unset, "\n".join(unset)


def test_every_violation_is_listed_at_once():
    c = align_config.get_config()
    c.tokenizer.token_hz = 3
    c.align.method = "nope"
    c.curate.solver = "magic"
    c.evaluate.num_scenes = -1  # 0 means "every held-out scene"
    with pytest.raises(ValueError) as e:
        stages.check(c)  # the boundary's checks and the registries' rules (the method name: align.check)
    for message in ("token_hz=3", "align.method='nope'", "magic", "evaluate.num_scenes=-1"):
        assert message in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: setattr(c.mesh, "data", 3), "not divisible by mesh.data=3"),
    (lambda c: setattr(c.tokenizer, "token_hz", 3), "token_hz=3 must divide 10"),
    (lambda c: setattr(c.model, "num_heads", 3), "not divisible by num_heads=3"),
    (lambda c: setattr(c.model, "compute_dtype", "float16"), "compute_dtype"),
    (lambda c: setattr(c.pretrain, "num_steps", 0), "num_steps must be >= 1"),
    (lambda c: setattr(c.data, "num_agents", 129), "num_agents=129"),
    (lambda c: setattr(c, "seed", 10**6), "seed="),
])
def test_impossible_combinations_are_refused(edit, message):
    c = pretrain_config.get_config()
    edit(c)
    with pytest.raises(ValueError, match=message):
        cfg_lib.check(c)


def test_mesh_and_batch_are_checked_against_the_devices():
    c = pretrain_config.get_config()
    c.mesh.data = 4
    cfg_lib.check(c, num_devices=4)
    with pytest.raises(ValueError, match="needs 8 devices, only 4"):
        c.mesh.data = 8
        cfg_lib.check(c, num_devices=4)
    c.mesh.data = -1
    c.pretrain.batch_size = 12
    with pytest.raises(ValueError, match="not divisible by the mesh data axis"):
        cfg_lib.check(c, num_devices=8)
    with pytest.raises(ValueError, match="not divisible by the 8 processes"):
        cfg_lib.check(c, num_devices=4, process_count=8)


def test_unknown_key_is_refused_by_the_launcher_before_anything_is_written(tmp_path):
    wd = tmp_path / "wd"
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/pretrain.py:smoke",
                          f"--workdir={wd}", "--config.nope=1"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0
    assert "unknown config key" in out.stderr and "nope" in out.stderr
    assert "Traceback" not in out.stderr
    assert not wd.exists()


def test_a_renamed_key_is_refused_naming_its_new_key(tmp_path):
    """An old key (--config.curate.num_pairs) ends in one FATAL line that names the new key, before anything runs."""
    c = align_config.get_config()
    for old, new in common.RENAMED_KEYS.items():
        section, _, name = new.rpartition(".")
        assert name in _section(c, section), new
        assert old.rpartition(".")[2] not in _section(c, old.rpartition(".")[0]), old
    wd = tmp_path / "wd"
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/align.py:smoke",
                          f"--workdir={wd}", "--config.curate.num_pairs=8"], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "FATAL: config key curate.num_pairs was renamed: use --config.curate.top_k"]
    assert not wd.exists()


def _section(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


def test_impossible_combination_is_refused_by_the_launcher(tmp_path):
    wd = tmp_path / "wd"
    out = subprocess.run([sys.executable, "-m", "dpa_omf.launch", "--config=configs/pretrain.py:smoke",
                          f"--workdir={wd}", "--config.tokenizer.token_hz=3"], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode != 0
    assert "token_hz=3 must divide 10" in out.stderr
    assert not wd.exists()


def test_stage_fingerprint_follows_results_not_cosmetics(tmp_path):
    base = pretrain_config.get_config()
    fp = lambda c: stages.fingerprint("pretrain", c, tmp_path)
    cosmetic = pretrain_config.get_config()
    cosmetic.pretrain.progress_bar = False
    cosmetic.pretrain.log_every = 1
    cosmetic.data.synthetic.num_workers = 1
    assert fp(cosmetic) == fp(base)
    for edit in (lambda c: setattr(c.pretrain, "num_steps", 5), lambda c: setattr(c.model, "d_model", 64),
                 lambda c: setattr(c.tokenizer, "token_hz", 10), lambda c: setattr(c, "seed", 1)):
        other = pretrain_config.get_config()
        edit(other)
        assert fp(other) != fp(base)


def test_align_fingerprint_ignores_run_only_keys_but_not_seeds(tmp_path):
    fp = lambda c: stages.fingerprint("align", c, tmp_path)
    base = align_config.get_config()
    cosmetic = align_config.get_config()
    cosmetic.job = "align"  # the study runs alignments without the final table
    cosmetic.align.progress_bar = False
    assert fp(cosmetic) == fp(base)
    seeded = align_config.get_config()
    seeded.align.seed = 1  # a repeated run is a different result
    assert fp(seeded) != fp(base)
    # ... but not a different reference or curation.
    assert stages.fingerprint("curate", seeded, tmp_path) == stages.fingerprint("curate", base, tmp_path)


def test_the_graph_runs_prerequisites_in_order_and_names_the_align_folder_by_method(tmp_path):
    c = align_config.get_config("afd")
    assert stages.GRAPH["align"].folder_of(c) == "align_afd"
    assert stages.GRAPH["align"].folder_of(align_config.get_config()) == "align"
    order = []

    def visit(name):
        for need in stages.GRAPH[name].needs:
            visit(need)
        if name not in order:
            order.append(name)

    visit("evaluate")
    assert order == ["data", "prepare", "pretrain", "curate", "align", "evaluate"]


@pytest.mark.parametrize("all_processes", [True, False])
def test_a_non_writing_process_checks_the_summary_only_after_the_barrier(tmp_path, monkeypatch, all_processes):
    # Process 1 of 2: its run returns at once; process 0 writes the summary later, which this process sees
    # only once both have met at the barrier (the race that made a 2-process pretrain rerun fail).
    from dpa_omf.jobs import workdir

    c = align_config.get_config("smoke")
    fp = stages.fingerprint("data", c, tmp_path)
    monkeypatch.setattr(workdir, "is_writer", lambda: False)
    monkeypatch.setattr(workdir, "barrier",
                        lambda name: name == "stage_data" and (
                            workdir.stage_dir(tmp_path, "data").mkdir(parents=True, exist_ok=True),
                            (workdir.stage_dir(tmp_path, "data") / workdir.SUMMARY).write_text(
                                f'{{"config_fingerprint": "{fp}", "outputs": {{}}}}')))  # written and sealed
    stage = dataclasses.replace(stages.GRAPH["data"], run=lambda *a: 0, all_processes=all_processes)
    monkeypatch.setitem(stages.GRAPH, "data", stage)
    assert stages.ensure("data", c, tmp_path) == 0


def test_optimizer_sections_take_command_line_overrides(monkeypatch):
    """Both training stages build their optimizer section with one helper, so
    every key (decay_steps too, None by default) can be set from the command line."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={REPO / 'configs' / 'align.py'}", "--config.align.optim.decay_steps=30",
            "--config.pretrain.optim.decay_steps=50"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=fv)
    fv(argv)
    assert fv.config.align.optim.decay_steps == 30
    assert fv.config.pretrain.optim.decay_steps == 50
    assert set(fv.config.align.optim) == set(fv.config.pretrain.optim)
