"""The align job: fine-tune the reference model on automatically ranked rollouts.

Methods (``align.method``):
  dpa_omf       multi-agent CPL on the OT-ranked pairs (16 closest vs 16 farthest).
  dpa_adef      the same on pairs ranked by ADE to the expert.
  sft_best_oa   supervised fine-tuning on the ``sft_top_k`` (32) closest rollouts by OT.
  sft_best_ade  the same by ADE.
  afd           adversarial feedback from demonstrations: the expert is preferred
                over every generated rollout.
  dpo           DPO on the OT pairs with the frozen reference (optional extra).
  online        online DPA-OMF: every round ranks the *current* policy's own rollouts
                (sample -> features -> OT -> pairs, in the training step) and takes CPL
                updates on them; no preference shards.
  catk          CAT-K closed-loop SFT (Zhang et al., CVPR 2025): NLL of the reference's
                closest-among-top-K rollouts, drawn in the training step.
  ntp           the compute-matched control: next-token prediction on the logged futures of
                the same training scenes (the reference trained further, same steps and examples).

Offline methods (the first six) train on the curated rankings; the scene-only
methods (online, catk, ntp) read the same curated training scenes but make
their own training data in the step (``loop.Objective(prepare_fn=...)``): online
with the policy's parameters at that step, CAT-K with the frozen reference's.
Online: ``align.num_steps`` rounds of ``align.batch_size`` scenes, each
``align.online.num_rollouts`` rollouts ranked by OT, then
``align.online.steps_per_round`` updates on that round's data (``loss``:
'pairs', the ``pairs_per_scene`` of the K closest-vs-farthest pairs per update,
or 'ranked', CPL over every ordered pair of the R rollouts). Anchors to the
reference, each switchable: CPL's conservative lambda, ``online.kl_weight``
(per-token KL to the reference on the trained sequences) and
``online.reference_ratio`` (DPO-style scores log pi - log pi_ref). The round's
rollout keys come from the global scene index and the round only (round 0 of a
scene uses the curate job's key for it): a resumed run prepares exactly the
same rounds.

Levers of the offline CPL methods (dpa_omf, dpa_adef; ``dpa_omf/configs/post_training.py``, defaults = the
paper's loss): ``align.offline_loss`` ('pairs': ``pairs_per_scene`` (k-th closest, k-th farthest)
pairs per scene; 'top_bottom': ``pairs_per_scene`` of the closest and as many of the farthest, every
cross pair; 'ranked': ``ranked_rollouts`` of the R stored rollouts (0: all), CPL over every ordered pair
by their stored distance; both through ``losses.ranked_cpl_loss``, online's ranked loss);
``align.credit='agent'`` (dpa_omf: each agent ranks the decoded rollouts by its own stored OT distance
and is scored alone; with 'pairs' each pair is a ranking of two); the anchors ``align.kl_weight`` and
``align.reference_ratio`` (online's, the same code: :func:`align_losses.anchored_log_probs`); and
``align.eval_agent_weight``, the weight of the agents the realism metric evaluates (inside the scene
score under scene credit, on their comparisons under agent credit).

Every method trains with the shared sharded loop (``dpa_omf.train.loop``):
same mesh, checkpoints, resume, preemption and logs as pretraining. The
reference parameters are restored once from ``WORKDIR/pretrain/checkpoints``,
passed as the initial parameters and as the frozen pytree (KL, DPO), and never
re-saved. Outputs: ``WORKDIR/align/`` for DPA-OMF, ``WORKDIR/align_<method>/``
for the others.

A training example is one ranked scene: its scenario (re-read from the data
files by reference) and ``align.pairs_per_scene`` of its pairs (or sequences),
drawn deterministically from the step index. The scene is encoded once and the
2P sequences are decoded against that encoding.

Logged per evaluation on held-out rankings (the last ``align.heldout_fraction``
of the curated scenes, never trained on): preference classification accuracy
(S+ > S-), the mean NLL per token of preferred, unpreferred and expert
sequences, and KL(policy || reference) per token on the expert contexts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpa_omf import datatypes as dt
from dpa_omf.io import reader
from dpa_omf.jobs import align_losses, curate, prepare, pretrain, realism_eval
from dpa_omf.jobs import config as cfg_lib
from dpa_omf.jobs import workdir as wd
from dpa_omf.model import motion_lm as mlm
from dpa_omf.train import loop, losses

STAGE = "align"


def folder_name(method: str) -> str:
    """The workdir folder of an alignment method's stage: ``align`` (DPA-OMF) or ``align_<method>``."""
    return STAGE if method == "dpa_omf" else f"{STAGE}_{method}"


def finished_folders(workdir: str) -> dict[str, str]:
    """Every finished alignment stage in the workdir: method -> folder."""
    out = {}
    for method in METHODS:
        folder = folder_name(method)
        if (wd.stage_dir(workdir, folder) / wd.SUMMARY).exists():
            out[method] = folder
    return out


# ----------------------------------------------------------------------------- pair sides
def _stored_pairs(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """(preferred, unpreferred) as curated: the K closest vs the K farthest by OT."""
    del cfg
    return shards["preferred"], shards["unpreferred"]


def _ade_pairs(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """The same rollouts re-ranked by ADE to the expert: the K closest vs the K farthest."""
    del cfg
    k = shards["preferred"].shape[1]
    order = np.argsort(shards["ade_distance"], axis=1, kind="stable")
    return order[:, :k], order[:, ::-1][:, :k]


def _top_k(key: str):
    def sides(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
        """(the ``sft_top_k`` closest by ``key``, the same): SFT uses the first side only."""
        top = np.argsort(shards[key], axis=1, kind="stable")[:, :cfg.sft_top_k]
        return top, top

    return sides


def _every_rollout(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """(unused, every generated rollout): AFD compares each against the expert."""
    del cfg
    n, r = shards["tokens"].shape[:2]
    every = np.broadcast_to(np.arange(r), (n, r))
    return every, every


class PairBatches:
    """Deterministic batches of ranked scenes: global batch k is a pure function of k.

    Global batch k holds ``batch_size`` (B) scenes; this process's batch is its
    contiguous share of them, ``B_local = B / process_count`` scenes (process p
    takes positions ``p * B_local ..``): numpy ``Scenario [B_local, ...]``,
    ``preferred`` / ``unpreferred`` int32 token sequences ``[B_local, P, A, S]`` and their
    validity ``[B_local, P, A, S]``. The pair draws are made for the whole global
    batch on every process (a few integers per scene) and each keeps its share,
    so the global batch does not depend on the number of processes.

    With ``align.offline_loss`` 'top_bottom' / 'ranked' a scene's rollouts are
    one ranking instead: ``all [B_local, M, A, S]``, ``all_valid`` and their
    ``distance [B_local, M]`` (the method's stored distance; 'top_bottom': 0 for
    the closest drawn, 1 for the farthest). Agent credit adds each agent's
    stored OT distance and counted mask, ``[B_local, P, A]`` per side
    (``preferred_agent_distance``, ``preferred_agent_counted``, ``unpreferred_...``) or ``[B_local,
    M, A]`` (``agent_distance``, ``agent_counted``).
    """

    def __init__(self, shards: dict, rows: np.ndarray, store: prepare.Scenes, cfg: cfg_lib.AlignConfig,
                 batch_size: int, seed: int, shuffle: bool = True, key_seed: int = 0,
                 process_index: int | None = None, process_count: int | None = None):
        self.shards, self.rows, self.store, self.cfg = shards, rows, store, cfg
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        p = jax.process_index() if process_index is None else process_index
        n = jax.process_count() if process_count is None else process_count
        if batch_size % n:
            raise ValueError(f"align: batch_size {batch_size} is not divisible by the {n} processes")
        self.local = range(p * (batch_size // n), (p + 1) * (batch_size // n))  # this process's positions
        self.key_seed = key_seed  # scene-only methods: the global seed (the curate job's rollout keys)
        self.scene_only = METHODS[cfg.method].sides is None
        if self.scene_only:
            index = {(s.file, s.record): i for i, s in enumerate(store.sources())}
            files = store.files
            self.scene_index = np.asarray([index[(files[int(f)], int(r))] for f, r in
                                           zip(shards["file_index"], shards["record_index"])], np.int64)
        else:
            self.preferred_idx, self.unpreferred_idx = side_indices(shards, cfg)
        if cfg.cpl.credit == "agent" and "ot_agent_distance" not in shards:
            raise ValueError("align.credit='agent' needs per-agent OT distances (ot_agent_distance), which these "
                             "curated shards lack (written before they were stored): re-run the curate stage")

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        return np.random.default_rng([self.seed, epoch]).permutation(self.rows)

    def batch(self, k: int) -> dict:
        """This process's share of global batch ``k``."""
        n = len(self.rows)
        picks = [k * self.batch_size + i for i in range(self.batch_size)]
        rows = [self._order(p // n)[p % n] for p in picks]  # the global batch
        if self.scene_only:
            return self._scene_batch([rows[i] for i in self.local], k)
        rng = np.random.default_rng([self.seed, 1_000_003, k])
        if self.cfg.offline_loss != "pairs" and METHODS[self.cfg.method].ranked_by is not None:
            return self._ranking_batch(rows, rng)
        scenes, preferred, unpreferred = [], [], []
        extra = {n: [] for n in self._agent_keys(("preferred_", "unpreferred_"))}
        p = self.cfg.pairs_per_scene
        for i, row in enumerate(rows):
            kp, kn = self.preferred_idx[row], self.unpreferred_idx[row]
            j = rng.choice(len(kp), size=p, replace=len(kp) < p)
            # Paired methods keep the (k-th best, k-th worst) pairing; the others draw negatives apart.
            jn = j if METHODS[self.cfg.method].paired else rng.choice(len(kn), size=p, replace=len(kn) < p)
            if i not in self.local:
                continue  # another process's scene: its draws were made, to keep the generator's sequence
            fi, ri = int(self.shards["file_index"][row]), int(self.shards["record_index"][row])
            scenes.append(self.store.read(reader.Source(self.store.files[fi], ri)))
            toks = self.shards["tokens"][row].astype(np.int32)
            preferred.append(toks[kp[j]])
            unpreferred.append(toks[kn[jn]])
            for side, idx in (("preferred_", kp[j]), ("unpreferred_", kn[jn])):
                self._append_agent(extra, side, row, idx)
        scenario = dt.stack_scenarios(scenes)
        sim = np.asarray(scenario.agents.sim_mask, bool)[:, None, :, None]
        preferred, unpreferred = np.stack(preferred), np.stack(unpreferred)
        valid = np.broadcast_to(sim, preferred.shape)
        return dict(scenario=scenario, preferred=preferred, unpreferred=unpreferred, preferred_valid=valid,
                    unpreferred_valid=valid, **{n: np.stack(v) for n, v in extra.items()})

    def _agent_keys(self, prefixes: tuple[str, ...]) -> list[str]:
        """The per-agent batch entries agent credit needs (none under scene credit)."""
        if self.cfg.cpl.credit != "agent":
            return []
        return [p + n for p in prefixes for n in ("agent_distance", "agent_counted")]

    def _append_agent(self, extra: dict, prefix: str, row: int, idx: np.ndarray) -> None:
        if self.cfg.cpl.credit == "agent":
            extra[prefix + "agent_distance"].append(self.shards["ot_agent_distance"][row][idx])
            extra[prefix + "agent_counted"].append(self.shards["ot_agent_counted"][row][idx])

    def _ranking_batch(self, rows: list[int], rng: np.random.Generator) -> dict:
        """'top_bottom' / 'ranked': each scene's drawn rollouts as one ranking (see the class docstring)."""
        cfg, p = self.cfg, self.cfg.pairs_per_scene
        scenes, seqs, dists = [], [], []
        extra = {n: [] for n in self._agent_keys(("",))}
        for i, row in enumerate(rows):
            if cfg.offline_loss == "top_bottom":
                kp, kn = self.preferred_idx[row], self.unpreferred_idx[row]
                idx = np.concatenate([kp[rng.choice(len(kp), size=p, replace=len(kp) < p)],
                                      kn[rng.choice(len(kn), size=p, replace=len(kn) < p)]])
                d = np.repeat(np.asarray([0.0, 1.0], np.float32), p)
            else:
                r = self.shards["tokens"].shape[1]
                idx = rng.choice(r, size=cfg.ranked_rollouts or r, replace=False)
                d = self.shards[METHODS[cfg.method].ranked_by][row][idx].astype(np.float32)
            if i not in self.local:
                continue  # another process's scene: its draws were made, to keep the generator's sequence
            fi, ri = int(self.shards["file_index"][row]), int(self.shards["record_index"][row])
            scenes.append(self.store.read(reader.Source(self.store.files[fi], ri)))
            seqs.append(self.shards["tokens"][row][idx].astype(np.int32))
            dists.append(d)
            self._append_agent(extra, "", row, idx)
        scenario = dt.stack_scenarios(scenes)
        seqs = np.stack(seqs)
        valid = np.broadcast_to(np.asarray(scenario.agents.sim_mask, bool)[:, None, :, None], seqs.shape)
        return dict(scenario=scenario, all=seqs, all_valid=valid, distance=np.stack(dists),
                    **{n: np.stack(v) for n, v in extra.items()})

    def _scene_batch(self, rows: list[int], k: int) -> dict:
        """Scene-only methods: the scenes and their rollout keys for round ``k`` (raw key data ``[B, 2]``):
        ``curate.rollout_key(key(seed), scene index, k)``, the curate job's key of the scene for k = 0."""
        scenes = [self.store.read(reader.Source(self.store.files[int(self.shards["file_index"][r])],
                                                int(self.shards["record_index"][r]))) for r in rows]
        base = jax.random.key(self.key_seed)
        keys = [jax.random.key_data(curate.rollout_key(base, int(self.scene_index[r]), k)) for r in rows]
        return dict(scenario=dt.stack_scenarios(scenes), keys=np.stack(jax.device_get(keys)).astype(np.uint32))

    def from_step(self, start: int):
        k = start
        while True:
            yield self.batch(k)
            k += 1


# ----------------------------------------------------------------------------- the method registry
def _curated_rollouts(config: ml_collections.ConfigDict, train_rankings: int) -> int:
    return train_rankings * config.curate.num_rollouts


def _round_rollouts(config: ml_collections.ConfigDict, train_rankings: int) -> int:
    return config.align.num_steps * config.align.batch_size * config.align.online.num_rollouts


def _catk_rollouts(config: ml_collections.ConfigDict, train_rankings: int) -> int:
    return config.align.num_steps * config.align.batch_size * config.align.pairs_per_scene


def _no_rollouts(config: ml_collections.ConfigDict, train_rankings: int) -> int:
    return 0


@dataclasses.dataclass(frozen=True)
class Method:
    """An alignment method: the two sides it compares, the loss it optimizes, and what the config rules, the
    study and the cost accounting need to know of it.

    Attributes:
      sides: ``(shards, cfg) -> (preferred [N, K], unpreferred [N, K])`` rollout indices per curated scene.
        None for the scene-only methods (their batches hold scenes and rollout keys).
      loss: ``(log_probs, cfg) -> (loss, metrics)``; ``log_probs`` computes what the loss asks for.
      paired: draw the k-th ``preferred`` with the k-th ``unpreferred`` (ranked pairs); else negatives are drawn apart.
      prepare: scene-only methods that make their data in the step: ``(model, cfg, curation cfg) ->
        prepare_fn`` (``loop.train``'s contract); None: train on the loaded batch. Their rollouts grow with the
        steps (the study draws their realism against rollouts sampled).
      ranked_by: the stored distance that orders the curated rollouts for CPL on rankings: the offline levers
        (``align.offline_loss``, ``kl_weight``, ``reference_ratio``, ``eval_agent_weight``) apply; None: refused.
      per_agent: ranks by per-agent OT distances, so ``align.credit='agent'`` applies.
      top_k: trains on the ``align.sft_top_k`` closest curated rollouts (at most ``curate.num_rollouts``).
      rounds: a step is a round: it samples and ranks its own rollouts (the OT solver is recorded) and takes
        ``align.online.steps_per_round`` updates on them.
      sampled: ``(config, train_rankings) -> rollouts`` sampled to make its training data (the cost the
        equal-cost comparison matches).
      study_default: one of the study's default methods.
    """

    sides: Callable[[dict, cfg_lib.AlignConfig], tuple[np.ndarray, np.ndarray]] | None
    loss: Callable[[align_losses.LogProbs, cfg_lib.AlignConfig], tuple[jax.Array, dict]]
    paired: bool
    prepare: Callable | None = None
    ranked_by: str | None = None
    per_agent: bool = False
    top_k: bool = False
    rounds: bool = False
    sampled: Callable[[ml_collections.ConfigDict, int], int] = _curated_rollouts
    study_default: bool = False


# The alignment methods: the one list. Adding one is an entry here (and its loss); that makes the variants
# configs/align.py:<name> and configs/submit.py:<name>, the align_<name> folder, its evaluation row and its place in
# the study.
METHODS: dict[str, Method] = {
    # CPL on the OT-ranked pairs (the paper)
    "dpa_omf": Method(_stored_pairs, align_losses.cpl_loss, paired=True, ranked_by="ot_distance", per_agent=True,
                      study_default=True),
    "dpa_adef": Method(_ade_pairs, align_losses.cpl_loss, paired=True, ranked_by="ade_distance",
                       study_default=True),  # CPL on ADE-ranked pairs
    "sft_best_oa": Method(_top_k("ot_distance"), align_losses.sft_loss, paired=False, top_k=True,
                          study_default=True),  # SFT on the closest by OT
    "sft_best_ade": Method(_top_k("ade_distance"), align_losses.sft_loss, paired=False,
                           top_k=True),  # SFT on the closest by ADE
    "afd": Method(_every_rollout, align_losses.afd_loss, paired=False,
                  study_default=True),  # the expert preferred over every rollout
    "dpo": Method(_stored_pairs, align_losses.dpo_loss, paired=True),  # DPO against the frozen reference
    # online ranks its own rollouts; catk: SFT on the reference's CAT-K rollouts
    "online": Method(None, align_losses.online_loss, paired=True, prepare=align_losses.online_prepare, rounds=True,
                     sampled=_round_rollouts),
    "catk": Method(None, align_losses.sft_loss, paired=False, prepare=align_losses.catk_prepare,
                   sampled=_catk_rollouts),
    "ntp": Method(None, align_losses.expert_loss, paired=False, sampled=_no_rollouts),  # compute-matched control
}


def check(c: ml_collections.ConfigDict) -> list[str]:
    """The config rules of the methods (``cfg_lib.check``'s ``rules``): ``align.method`` and ``submit.model`` name
    entries of ``METHODS``; the offline levers, agent credit, the SFT top-k and a round's updates apply only where
    the chosen method's entry says so."""
    a, m = c.align, METHODS.get(c.align.method)
    errors = []
    if c.submit.model != "reference" and c.submit.model not in METHODS:
        errors.append(f"submit.model={c.submit.model!r} is not 'reference' or an alignment method {tuple(METHODS)}")
    if m is None:
        return errors + [f"align.method={a.method!r} is not an alignment method {tuple(METHODS)} (a variant of "
                         "configs/align.py that is not smoke or womd names a method)"]
    levers = {"offline_loss": a.offline_loss != "pairs", "kl_weight": a.kl_weight > 0,
              "reference_ratio": a.reference_ratio, "eval_agent_weight": a.eval_agent_weight != 1.0}
    used = [k for k, on in levers.items() if on]
    if used and m.ranked_by is None:
        cpl = tuple(n for n, x in METHODS.items() if x.ranked_by is not None)
        errors.append(f"align.{', align.'.join(used)} apply to the offline CPL methods {cpl}, "
                      f"not align.method={a.method!r}")
    if a.credit == "agent" and not m.per_agent:
        agent = tuple(n for n, x in METHODS.items() if x.per_agent)
        errors.append(f"align.credit='agent' ranks by per-agent OT distances: method {agent} only, "
                      f"not {a.method!r}")
    if m.top_k and a.sft_top_k > c.curate.num_rollouts:
        errors.append(f"align.sft_top_k={a.sft_top_k} exceeds curate.num_rollouts={c.curate.num_rollouts}")
    if m.rounds:
        try:
            train_config(c)
        except ValueError as e:
            errors.append(f"align.online.steps_per_round={a.online.steps_per_round}: {e}")
    return errors


def train_config(c: ml_collections.ConfigDict) -> loop.TrainConfig:
    """The alignment loop's config; a method with rounds takes ``align.online.steps_per_round`` updates per
    step (its updates share the round's rollouts)."""
    config = cfg_lib.align_train(c)
    if METHODS[c.align.method].rounds:
        config = dataclasses.replace(config, updates_per_step=c.align.online.steps_per_round)
        config.validate()
    return config


def side_indices(shards: dict, cfg: cfg_lib.AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rollout indices of the two sides of every ranking, ``[N, K]`` each (the method's ``sides``)."""
    return METHODS[cfg.method].sides(shards, cfg)


def make_loss_fn(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig) -> loop.LossFn:
    method = METHODS[cfg.method]

    def loss_fn(params, batch, rng, frozen):
        loss, m = method.loss(align_losses.LogProbs(model, params, frozen, batch, rng), cfg)
        return loss, _pairs(m)

    return loss_fn


def _pairs(m: dict) -> dict:
    """Loss metrics as (masked sum, count) pairs for the loop."""
    out = {}
    if "pref_accuracy_sum" in m:
        out["pref_accuracy"] = (m["pref_accuracy_sum"], m["pairs"])
        out["pref_loss"] = (m["pref_loss_sum"], m["pairs"])
    out["nll_preferred"] = (m["nll_preferred_sum"], m["tokens_preferred"])
    if "nll_unpreferred_sum" in m:
        out["nll_unpreferred"] = (m["nll_unpreferred_sum"], m["tokens_unpreferred"])
    if "kl_sum" in m:
        out["kl_anchor"] = (m["kl_sum"], m["kl_tokens"])
    return out


def make_eval_fn(model: mlm.MotionLM, cfg: cfg_lib.AlignConfig):
    """Held-out metrics: preference accuracy on OT pairs, NLLs, and KL to the reference."""
    score = cfg.cpl.score

    def eval_fn(params, batch, rng, frozen):
        del rng
        s = batch["scenario"]
        pv, nv = batch["preferred_valid"], batch["unpreferred_valid"]
        lp_preferred, _ = align_losses.batched_log_probs(model, params, s, batch["preferred"], pv)
        lp_unpreferred, _ = align_losses.batched_log_probs(model, params, s, batch["unpreferred"], nv)
        exp_tok, exp_valid = align_losses.expert_sequences(model, s)
        lp_exp, logits = align_losses.batched_log_probs(model, params, s, exp_tok, exp_valid)
        _, ref_logits = align_losses.batched_log_probs(model, frozen, s, exp_tok, exp_valid)
        s_preferred = losses.sequence_score(lp_preferred, pv, score)
        s_unpreferred = losses.sequence_score(lp_unpreferred, nv, score)
        kl, kl_n = losses.token_kl(logits, ref_logits, exp_valid)
        nll = lambda lp, v: (-jnp.where(v, lp, 0.0).sum(), v.sum())
        return {
            "pref_accuracy": ((s_preferred > s_unpreferred).sum(), s_preferred.size),
            "nll_preferred": nll(lp_preferred, pv),
            "nll_unpreferred": nll(lp_unpreferred, nv),
            "nll_expert": nll(lp_exp, exp_valid),
            "kl_to_reference": (kl, kl_n),
        }

    return eval_fn


# ----------------------------------------------------------------------------- job
def run(config: ml_collections.ConfigDict, workdir: str, fingerprint: str) -> int:
    """Aligns into ``WORKDIR/align[_<method>]``; returns 0 when done, 75 when preempted (saved; rerun)."""
    t0 = time.time()
    cfg = cfg_lib.align(config)
    errors = check(config)  # the launcher checked them (stages.check); a direct caller gets them here
    if errors:
        raise cfg_lib.ConfigError("invalid config:\n  " + "\n  ".join(errors))
    model, ref = pretrain.load_params(config, workdir)
    shards = curate.load_shards(workdir)
    n = shards["tokens"].shape[0]
    n_held = max(1, round(n * cfg.heldout_fraction)) if n > 1 else 0
    train_rows, held_rows = np.arange(n - n_held), np.arange(n - n_held, n)
    if len(train_rows) == 0:
        raise ValueError(f"align: {n} curated scenes leave none for training after holding out {n_held}")
    store = prepare.open_scenes(config, workdir, "train", [str(f) for f in shards["files"]])
    b = config.align.batch_size  # global; each process reads its share (PairBatches)
    train_b = PairBatches(shards, train_rows, store, cfg, b, cfg_lib.align_seed(config), key_seed=config.seed)
    method = METHODS[cfg.method]
    train = train_config(config)
    prepare_fn, extra = None, {}
    if method.prepare is not None:
        ccfg, why = cfg_lib.online_curation(config, jax.device_count())
        prepare_fn = method.prepare(model, cfg, ccfg)
        if method.rounds:
            extra = {"online_solver": ccfg.ot.solver, "online_solver_choice": why}
    extra["rollouts_sampled"] = method.sampled(config, n - n_held)
    # Held-out evaluation always uses the OT pairs: the preference the paper's accuracy measures.
    eval_cfg = dataclasses.replace(cfg, method="dpa_omf", offline_loss="pairs",
                                   cpl=dataclasses.replace(cfg.cpl, credit="scene"))
    held = PairBatches(shards, held_rows if len(held_rows) else train_rows, store, eval_cfg, b,
                       config.seed, shuffle=False)
    n_eval = max(1, min(config.align.eval_batches, -(-len(held.rows) // b)))
    eval_batches = [held.batch(k) for k in range(n_eval)]
    objective = loop.Objective(make_loss_fn(model, cfg), lambda rng: ref, eval_fn=make_eval_fn(model, cfg),
                               prepare_fn=prepare_fn, frozen=ref, initial_params=ref)
    reporting = loop.Reporting(
        eval_batches_fn=lambda: iter(eval_batches), extra_eval=realism_eval.training_realism(config, workdir, "align"),
        summary_extra=lambda s: {"config_fingerprint": fingerprint, "method": cfg.method,
                                 "train_scenes": len(train_rows), "heldout_scenes": int(n_held),
                                 "updates": train.num_updates, "seconds": time.time() - t0, **extra})
    result = loop.train(objective, train_b.from_step, train, workdir, folder_name(cfg.method), reporting=reporting)
    return result.exit_code
