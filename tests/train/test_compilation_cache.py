"""JAX's persistent compilation cache (dpa_omf.train.compilation_cache): which folder, the JAX settings, and a
second process that loads what the first compiled."""

import json
import os
import subprocess
import sys

import jax

from dpa_omf.train import compilation_cache as cc

# Compiles one tiny program and reports how many compilations the persistent cache answered.
TINY_JOB = """
import json, sys
import jax, jax.numpy as jnp
from dpa_omf.train import compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
folder = compilation_cache.enable(sys.argv[1])
jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(5.0)))
print(json.dumps({"folder": folder, "hits": len(hits)}))
"""


def test_folder_precedence(tmp_path):
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert cc.resolve(None, xdg) == str(tmp_path / "xdg" / "dpa_omf" / "jax_compilation_cache")
    assert cc.resolve(None, {}) == os.path.join(os.path.expanduser("~"), ".cache", "dpa_omf", "jax_compilation_cache")
    jax_env = {**xdg, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax")}
    assert cc.resolve(None, jax_env) == str(tmp_path / "jax")
    ours = {**jax_env, cc.ENV_VAR: str(tmp_path / "env")}
    assert cc.resolve(None, ours) == str(tmp_path / "env")
    assert cc.resolve(str(tmp_path / "flag"), ours) == str(tmp_path / "flag")
    assert cc.resolve("gs://bucket/cache", ours) == "gs://bucket/cache"
    assert cc.resolve("relative", {}) == os.path.abspath("relative")


def test_off_wins_over_everything_below_it(tmp_path):
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax"), cc.ENV_VAR: "OFF"}
    assert cc.resolve(None, env) is None
    assert cc.resolve("off", {cc.ENV_VAR: str(tmp_path)}) is None
    assert cc.resolve(str(tmp_path / "flag"), env) == str(tmp_path / "flag")  # the flag beats the env var's off


def test_enable_sets_jax_config_and_creates_the_folder(tmp_path, restore_compilation_cache):
    folder = tmp_path / "a" / "cache"
    assert cc.enable(str(folder)) == str(folder)
    assert folder.is_dir()
    assert jax.config.jax_enable_compilation_cache
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1


def test_off_disables(tmp_path, restore_compilation_cache):
    cc.enable(str(tmp_path))
    assert cc.enable("off") is None
    assert not jax.config.jax_enable_compilation_cache
    assert jax.config.jax_compilation_cache_dir is None


def test_env_var_overrides_the_default(tmp_path, monkeypatch, restore_compilation_cache):
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "env"))
    assert cc.enable() == str(tmp_path / "env")
    assert (tmp_path / "env").is_dir()
    monkeypatch.setenv(cc.ENV_VAR, "off")
    assert cc.enable() is None
    assert not jax.config.jax_enable_compilation_cache


def test_a_folder_that_cannot_be_made_turns_the_cache_off(tmp_path, restore_compilation_cache):
    (tmp_path / "file").write_text("")
    assert cc.enable(str(tmp_path / "file" / "cache")) is None
    assert not jax.config.jax_enable_compilation_cache


def test_second_process_loads_what_the_first_compiled(tmp_path):
    folder = tmp_path / "cache"

    def run():
        out = subprocess.run([sys.executable, "-c", TINY_JOB, str(folder)], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert first == {"folder": str(folder), "hits": 0}
    entries = sorted(p.name for p in folder.iterdir())
    assert entries, "the first process wrote nothing to the cache"
    # Every program the first process compiled (the function, and jnp.arange's own) is loaded, none written.
    assert run() == {"folder": str(folder), "hits": len(entries)}
    assert sorted(p.name for p in folder.iterdir()) == entries
