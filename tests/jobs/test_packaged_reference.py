"""The packaged reference (dpa_omf/assets/reference): its manifest matches the default config, the pretrain
stage installs it, and it samples rollouts; configs it does not serve train from scratch, saying why."""

import jax
import numpy as np

from dpa_omf.configs import align as align_config
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import pretrain, stages
from dpa_omf.model import motion_lm as mlm
from dpa_omf.model import sampling
from dpa_omf.synthetic import dataset as synthetic
from dpa_omf.train import checkpointing


def test_manifest_describes_the_default_config():
    m = pretrain.packaged_manifest()
    assert m is not None, "no packaged reference"
    c = align_config.get_config()
    assert pretrain.packaged_mismatch(c) is None
    assert m["compatibility"] == pretrain.compatibility(c)
    assert m["steps"] > 0 and 0 < m["heldout_nll"] < np.log(169)
    assert "configs/pretrain.py:long" in m["command"]
    for key in ("composite", "collision_rate", "offroad_rate"):
        assert 0 <= m["realism"][key] <= 1


def test_configs_it_does_not_serve_say_why():
    smoke = align_config.get_config("smoke")
    assert "model.d_model=32" in pretrain.packaged_mismatch(smoke)
    off = align_config.get_config()
    off.pretrain.packaged = False
    assert pretrain.packaged_mismatch(off) == "pretrain.packaged=False"
    assert stages.fingerprint("pretrain", off, "/nowhere") != stages.fingerprint(
        "pretrain", align_config.get_config(), "/nowhere")


def test_the_stage_installs_it_and_it_samples_rollouts(tmp_path):
    c = align_config.get_config()
    assert pretrain.run(c, str(tmp_path), "fp") == 0
    model, params = pretrain.load_params(c, str(tmp_path))
    packaged = checkpointing.restore_params(pretrain.PACKAGED / "checkpoints", pretrain.abstract_params(c))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(packaged))
    assert mlm.param_count(params) == pretrain.packaged_manifest()["param_count"]
    scene = synthetic.generate_scenario(0, cfg_lib.synthetic_world(c))
    r = sampling.sample(model, params, scene, jax.random.key(0),
                        sampling.RolloutConfig(num_rollouts=2, rollout_chunk=2))
    sim = np.asarray(scene.agents.sim_mask)
    assert r.x.shape == (2, c.data.num_agents, 80)
    assert np.isfinite(np.asarray(r.x)[:, sim]).all()
