"""The sharpening control's sampling: the evaluation scores a model at another (temperature, top-p) with the same
rollout keys, as its own evaluation (fingerprint), and the sharper setting draws the model's likelier tokens."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import evaluate, report, stages
from dpa_omf.jobs import workdir as wd
from dpa_omf.metrics import names
from dpa_omf.model import sampling
from dpa_omf.tools.study import runs


def _config(flags: list[str]):
    c = align_config.get_config("smoke")
    for f in flags:  # the study's overrides, as the launcher applies them
        key, value = f.removeprefix("--config.").split("=")
        section, name = key.split(".")
        c[section][name] = float(value)
    return c


def test_a_sampling_setting_keeps_the_keys_and_is_its_own_evaluation():
    plain, sharp = _config([]), _config(runs.sampling_flags((0.85, 0.95)))
    p, s = cfg_lib.evaluate(plain), cfg_lib.evaluate(sharp)
    assert (s.rollout.temperature, s.rollout.top_p) == (0.85, 0.95)
    assert (p.rollout.temperature, p.rollout.top_p) == (1.0, 1.0)
    assert s.seed == p.seed  # the same rollout keys for every setting: a paired comparison
    # another setting is another evaluation: a cached result of the plain one is never served for it
    assert wd.fingerprint(plain, evaluate.EVAL_SECTIONS) != wd.fingerprint(sharp, evaluate.EVAL_SECTIONS)
    assert evaluate.sampled_name("reference", (0.85, 0.95)) == "reference@t0.85,p0.95"


def test_sharper_sampling_draws_likelier_tokens_with_the_same_keys():
    """The evaluation's sampler arguments at the sharpening setting, on a fixed token distribution (the rollout
    sampler passes ``cfg.rollout.temperature`` / ``top_p`` to this draw at every step, tests/model/test_rollout.py)."""
    logits = jnp.log(jnp.array([0.3, 0.25, 0.2, 0.15, 0.07, 0.03]))
    keys = jax.random.split(jax.random.key(cfg_lib.evaluate(_config([])).seed), 4000)

    def draw(flags):
        r = cfg_lib.evaluate(_config(flags)).rollout
        return np.asarray(jax.vmap(lambda k: sampling.sample_token(k, logits, r.temperature, r.top_p))(keys))

    plain, again = draw([]), draw([])
    np.testing.assert_array_equal(plain, again)  # same keys, same setting: the same draws
    sharp = draw(runs.sampling_flags((0.7, 0.9)))
    lp = np.asarray(logits)
    assert lp[sharp].mean() > lp[plain].mean() + 0.1  # likelier tokens under the untempered model
    assert set(np.unique(sharp)) == {0, 1, 2, 3}  # top-p 0.9 drops the 0.07 and 0.03 tokens (mass before: 0.9)
    assert set(np.unique(plain)) == set(range(6))


def test_the_table_names_a_sharpened_evaluation(tmp_path, capsys):
    row = dict.fromkeys(names.report(), 0.5)
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "summary.json").write_text(json.dumps({"steps": 120}))
    (tmp_path / "evaluate").mkdir()
    summary = {"models": {"reference": row}, "challenge": "2024", "num_scenes": 2, "num_rollouts": 4,
               "first_scene": 256, "sampling": {"temperature": 0.85, "top_p": 0.95}}
    (tmp_path / "evaluate" / "summary.json").write_text(json.dumps(summary))
    evaluate.print_table(str(tmp_path))
    assert "(from scene 256) x 4 rollouts, sampled at temperature 0.85, top-p 0.95" in capsys.readouterr().out
    report.write_report(tmp_path / "evaluate", [], summary)
    text = (tmp_path / "evaluate" / "report.md").read_text()
    assert "4 rollouts each, sampled at temperature 0.85, top-p 0.95" in text
    summary["sampling"] = {"temperature": 1.0, "top_p": 1.0}  # the model's own distribution: nothing to say
    (tmp_path / "evaluate" / "summary.json").write_text(json.dumps(summary))
    evaluate.print_table(str(tmp_path))
    assert "sampled" not in capsys.readouterr().out


def test_sampled_rows_parse_and_refuse_what_is_not_a_row():
    assert cfg_lib.sampled_rows("") == ()
    assert cfg_lib.sampled_rows("reference@t0.85,p0.9; dpa_omf@t0.7,p0.95") == (
        ("reference", 0.85, 0.9), ("dpa_omf", 0.7, 0.95))
    assert all(evaluate.sampled_name(m, (t, p)) == e for (m, t, p), e in zip(
        cfg_lib.sampled_rows("reference@t0.85,p0.9;dpa_omf@t0.7,p0.95"),
        ("reference@t0.85,p0.9", "dpa_omf@t0.7,p0.95"), strict=True))  # the row names read back as given
    for bad, why in (("reference", "is not"), ("reference@0.85,0.9", "is not"), ("reference@tx,p1", "is not"),
                     ("reference@t0,p1", "temperature > 0"), ("reference@t1,p1.5", "top-p <= 1"),
                     ("reference@t1,p0.9;reference@t1,p0.9", "twice")):
        with pytest.raises(ValueError, match=why):
            cfg_lib.sampled_rows(bad)
    c = align_config.get_config("smoke")
    c.evaluate.sampled = "nobody@t1,p0.9"
    with pytest.raises(ValueError, match="unknown model 'nobody'"):
        evaluate.rows(c, "/nonexistent")
    with pytest.raises(cfg_lib.ConfigError, match="unknown model 'nobody'"):  # refused before any compute
        stages.check(c)
    c.evaluate.sampled = "reference@t0.85"
    with pytest.raises(cfg_lib.ConfigError, match="is not 'model@tT,pP'"):
        stages.check(c)


def test_sampled_rows_do_not_change_the_other_rows_fingerprints():
    """Asking for rows leaves the evaluation's fingerprint (every cached row's key) as it was."""
    plain, more = align_config.get_config("smoke"), align_config.get_config("smoke")
    more.evaluate.sampled = "reference@t0.85,p0.9"
    assert wd.fingerprint(plain, evaluate.EVAL_SECTIONS) == wd.fingerprint(more, evaluate.EVAL_SECTIONS)
    assert align_config.get_config().evaluate.sampled == "reference@t0.85,p0.9;dpa_omf@t0.7,p0.95"


def test_the_report_gives_the_paired_difference_to_the_sharpened_reference(tmp_path):
    d = {"mean": 0.0046, "lo": -0.0003, "hi": 0.0099}
    row = dict.fromkeys(names.report(), 0.5)
    models = {"dpa_omf": row | {"composite_vs": {"reference@t0.85,p0.9": d}}, "reference": row,
              "reference@t0.85,p0.9": row, "dpa_omf@t0.7,p0.95": row}
    assert [line.split(" |")[0] for line in report.table(models).splitlines()[2:]] == [
        "| reference", "| reference@t0.85,p0.9", "| dpa_omf", "| dpa_omf@t0.7,p0.95"]
    assert "- dpa_omf minus reference@t0.85,p0.9: +0.0046 [-0.0003, +0.0099]" in report.versus(models)
    assert report.versus({"reference": row}) == ""
