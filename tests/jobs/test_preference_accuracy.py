"""The held-out preference accuracy (``tools/preference_accuracy``): every stored pair of rankings the models never
trained on, scored once; rankings a workdir's own curation holds are refused.

A smoke workdir curates the first half of its training scenes and aligns on them; a second one, with the same data
and reference, curates all of them (the same rollout keys: its first half equals the first's curation); its second
half is the held-out block.
"""

import jax
import job_processes as jp
import numpy as np
import pytest

from dpa_omf.configs import align as align_config
from dpa_omf.io import reader
from dpa_omf.jobs import align_losses, curate, prepare, pretrain
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.tools import preference_accuracy as pa
from dpa_omf.train import losses

FLAGS = ["--config.pretrain.num_steps=3", "--config.pretrain.realism_scenes=0", "--config.curate.pictures=False",
         "--config.align.num_steps=2", "--config.align.realism_scenes=0"]


@pytest.mark.slow
def test_held_out_accuracy_counts_every_pair_once_and_refuses_trained_scenes(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    (rc, err), = jp.wait([jp.launch(["--config=configs/align.py:smoke", "--config.job=align", *FLAGS,
                                     "--config.curate.rankings_per_example=0.5"], small, num_devices=1,
                                    multihost="no")])
    assert rc == 0, err[-3000:]
    jp.copy_stages(small, big, "data", "prepare", "pretrain")
    (rc, err), = jp.wait([jp.launch(["--config=configs/align.py:smoke", "--config.job=curate", *FLAGS,
                                     "--config.curate.rankings_per_example=1.0"], big,
                                    num_devices=1, multihost="no")])
    assert rc == 0, err[-3000:]
    s, b = curate.load_shards(str(small)), curate.load_shards(str(big))
    n = s["tokens"].shape[0]
    assert b["tokens"].shape[0] == 2 * n
    np.testing.assert_array_equal(b["tokens"][:n], s["tokens"])  # a prefix: the same rankings

    c = align_config.get_config("smoke")
    with pytest.raises(SystemExit, match="curated in"):
        pa.accuracy(c, str(big), f"{n - 1}:{2 * n}", [str(small)])
    out = pa.accuracy(c, str(big), f"{n}:{2 * n}", [str(small)], batch=3)  # 8 scenes: the last batch wraps around
    k = b["preferred"].shape[1]
    assert out["scenes"] == n and out["pairs_per_scene"] == k
    assert set(out["models"]) == {"reference", f"{small}/dpa_omf"}
    for m in out["models"].values():
        assert m["pairs"] == n * k and 0 <= m["pref_accuracy"] <= 1
        assert len(m["accuracy_per_scene"]) == n and np.mean(m["accuracy_per_scene"]) == pytest.approx(
            m["pref_accuracy"])

    # the reference's accuracy by hand: each pair's CPL score from the model's log-probs, scene by scene
    model, ref = pretrain.load_params(c, str(small))
    score = cfg_lib.align(c).cpl.score
    store = prepare.open_scenes(c, str(big), "train", [str(f) for f in b["files"]])
    wins, per_scene = 0, []
    for row in range(n, 2 * n):
        scene = store.read(reader.Source(store.files[int(b["file_index"][row])], int(b["record_index"][row])))
        scenario = jax.tree.map(lambda x: x[None], scene)
        sim = np.asarray(scene.agents.sim_mask, bool)[None, None, :, None]
        for side in ("preferred", "unpreferred"):
            toks = b["tokens"][row][b[side][row]].astype(np.int32)[None]  # [1, K, A, S]
            valid = np.broadcast_to(sim, toks.shape)
            lp, _ = align_losses.batched_log_probs(model, ref, scenario, toks, valid)
            if side == "preferred":
                s_pref = np.asarray(losses.sequence_score(lp, valid, score))
            else:
                s_unpref = np.asarray(losses.sequence_score(lp, valid, score))
        wins += int((s_pref > s_unpref).sum())
        per_scene.append(float((s_pref > s_unpref).mean()))
    store.close()
    assert out["models"]["reference"]["pref_accuracy"] == pytest.approx(wins / (n * k))
    assert out["models"]["reference"]["accuracy_per_scene"] == pytest.approx(per_scene)


def test_combine_pairs_each_method_with_the_reference_and_dpa_omf_over_seeds_and_scenes():
    ref = [0.5, 0.75, 1.0]

    def seed(w, dpa, ntp):
        return {"pairs_from": "P", "rows": "3:6", "scenes": 3, "pairs_per_scene": 4,
                "models": {"reference": {"accuracy_per_scene": ref}, f"{w}/dpa_omf": {"accuracy_per_scene": dpa},
                           f"{w}/ntp": {"accuracy_per_scene": ntp}}}

    out = pa.combine([seed("a", [0.75, 0.75, 1.0], [0.5, 0.5, 1.0]), seed("b", [0.75, 1.0, 1.0], [0.5, 0.75, 0.75])],
                     ["a.json", "b.json"])["methods"]
    assert out["reference"]["pref_accuracy"] == pytest.approx(0.75)
    assert out["dpa_omf"]["per_seed"] == pytest.approx([2.5 / 3, 2.75 / 3])
    d = out["dpa_omf"]["vs_reference"]
    assert d["mean"] == pytest.approx((0.25 + 0 + 0 + 0.25 + 0.25 + 0) / 6) and d["lo"] <= d["mean"] <= d["hi"]
    assert out["ntp"]["vs_dpa_omf"]["mean"] == pytest.approx((-0.25 - 0.25 + 0 - 0.25 - 0.25 - 0.25) / 6)
    with pytest.raises(SystemExit, match="different rankings"):
        pa.combine([seed("a", ref, ref), seed("b", ref, ref) | {"rows": "0:3"}], ["a", "b"])
