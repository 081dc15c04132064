"""Defaults of the post-training stages: curate, align, evaluate, submit (part of `common.base_config`)."""

from __future__ import annotations

import ml_collections

from dpa_omf.configs import optim as optim_config

# submit.description when left empty: what the submitted model is ({method}: the alignment method).
DESCRIPTIONS = {
    "reference": ("MotionLM-style autoregressive multi-agent model (169 acceleration tokens at 2 Hz, local-context "
                  "encoder), pretrained by next-token prediction; no preference alignment; "
                  "z held at the current step"),
    "aligned": ("MotionLM-style autoregressive multi-agent model (169 acceleration tokens at 2 Hz, local-context "
                "encoder), pretrained by next-token prediction, then post-trained with {method} "
                "(DPA-OMF: preference alignment from occupancy-measure matching feedback on its own rollouts); "
                "z held at the current step"),
}

def curate(variants: set[str]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_rollouts = 64  # rollouts ranked per scene
    # K of the ranking (not a sampling top-k): the K closest rollouts are preferred, the K farthest unpreferred,
    # and pair k is (k-th closest, k-th farthest), so K is also the pair count per scene
    c.top_k = 16
    # Rollouts sampled together (bounds memory; the tokens do not depend on it). 32 samples 1.2x faster than 16 on
    # a 2-core CPU (docs/benchmarks.md, "Rollout chunk"); 64 adds nothing more.
    c.rollout_chunk = 32
    c.temperature = 1.0
    c.top_p = 1.0
    c.rankings_per_example = 0.08  # rankings per training scene: 0.08 (80 scenes) fits the main job's CPU budget;
    # the paper ranks every scene (1.0; 0.5x-4x for scaling studies; :womd sets 1.0)
    c.scenes_per_shard = 32
    # Scenes ranked at once by each device (the batch of one step is this x the process's devices); the
    # preference set does not depend on it (nor on the number of devices or processes), only the speed. On a
    # CPU one scene is already a large, compute-bound program and a bigger batch only costs memory (BUILD_NOTES:
    # "Pod-scale curation and evaluation"); accelerators want several (:womd).
    c.scenes_per_device = 1
    c.solver = "auto"  # 'auto': exact_host on CPU backends, exact (on device) on GPU/TPU | 'exact_host' (exact on
    # the host CPU, numba; fastest exact on a CPU, see BUILD_NOTES) | 'exact' (on-device JAX auction/SSP) |
    # 'sinkhorn' (entropic, fixed iterations) | 'ott' (ott-jax, configured like ours)
    c.rescore_window = 0  # approximate solvers: re-score exactly this many ranks around each boundary
    c.rescore_solver = "exact_host"  # the exact solver of that re-scoring: 'exact_host' | 'exact'
    # Solver settings (dpa_omf/preference/distance.py: OTConfig). The exact on-device auction: costs scaled to
    # integers up to auction_levels (2**16 keeps int32 prices safe), epsilon divided by auction_eps_factor per
    # phase; problems with unequal valid counts gathered ragged_chunk at a time.
    c.auction_levels = 2**16
    c.auction_eps_factor = 8.0
    c.ragged_chunk = 1024
    # Sinkhorn: a fixed iteration count (a vmapped batch never waits for its slowest problem), epsilon annealed
    # from sinkhorn_eps_init to sinkhorn_eps_final (fractions of the mean cost) over sinkhorn_anneal_fraction of
    # the iterations (DESIGN: 0.5% cost error in 100 iterations); ot_rollout_chunk rollouts per Sinkhorn chunk
    # (bounds memory; 0: all at once; the exact solvers take every rollout at once).
    c.sinkhorn_iterations = 100
    c.sinkhorn_eps_init = 0.5
    c.sinkhorn_eps_final = 0.005
    c.sinkhorn_anneal_fraction = 0.7
    c.ot_rollout_chunk = 8
    c.feature_weights = (10.0, 5.0, 2.0, 1.0, 1.0)  # collision, road distance, clearance, effort, speed
    # Cost scaling (dpa_omf/preference/distance.py). weight_mode 'scale': c = ||w * (u - v)|| (weights inside the
    # norm, features in raw units) | 'quadratic': c = sqrt(sum_k w_k (u_k - v_k)^2). feature_scaling 'none' |
    # 'expert_std': each feature first divided by the scene's expert spread (its standard deviation over the
    # scored agents' logged steps), at least spread_floor (feature units; 1.0 keeps the 0/1 collision flag as is).
    # expert_std is the default: chosen on the powered study's validation block (+0.0075 +- 0.0020 over 'none',
    # docs/results/alignment.md), where raw units let road-edge distance make up 51-69% of the cost.
    c.weight_mode = "scale"
    c.feature_scaling = "expert_std"
    c.spread_floor = (1.0, 0.1, 0.1, 0.1, 0.1)
    # Feature caps (dpa_omf/preference/features.py: FeatureConfig): clearance above clearance_cap is "no
    # interaction"; the signed road-edge distance is clipped to +-road_distance_clip; accelerations to effort_cap.
    c.clearance_cap = 10.0  # m
    c.road_distance_clip = 5.0  # m
    c.effort_cap = 10.0  # m/s^2
    # The road-edge search of the distance feature (exact either way: queries the index cannot certify are searched
    # exhaustively): road-edge slots after compaction (0: every road-graph slot), the per-scene index's grid cells
    # per side (0: exhaustive search) and candidates per cell.
    c.max_road_edge_points = 0
    c.road_edge_grid = 64
    c.road_edge_candidates = 64
    # Rollouts featurized together (lax.map over chunks; the largest divisor of num_rollouts at most this; 0: all at
    # once): bounds the features' temporaries (~41 MB per rollout at :womd sizes, 128 agents and 30k road-graph
    # points; 8: 0.42 GiB per scene, all 64 at once: 2.61 GiB), never their values; 8 keeps the default sizes' speed
    # (docs/benchmarks.md, "Curation memory at WOMD sizes").
    c.feature_rollout_chunk = 8
    c.pictures = True
    if "womd" in variants:
        c.rankings_per_example = 1.0
        # --dry_run at 128 slots, 30k road-graph points, 64 rollouts: 0.42 GiB of temporaries per device (1.72 at 4)
        c.scenes_per_device = 4
    if "smoke" in variants:
        c.num_rollouts = 8
        c.top_k = 2
        c.rollout_chunk = 8
        c.scenes_per_shard = 4
        c.scenes_per_device = 1
    return c


def align(variants: set[str]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "dpa_omf"
    c.seed = 0  # alignment seed (pair order), combined with the global seed; vary it for repeated runs
    # CPL: S = alpha * sum_t gamma^t log pi, normalized per valid agent ('agents'; see dpa_omf/train/losses.py).
    c.alpha = 0.1
    c.gamma = 1.0
    c.normalize = "agents"
    c.conservative_lambda = 0.5
    c.bc_weight = 0.0
    c.dpo_beta = 0.1
    c.pairs_per_scene = 4  # pairs (or sequences) drawn per scene per step
    c.sft_top_k = 32
    c.heldout_fraction = 0.1  # last share of the curated scenes: held-out pairs for the accuracy
    # Levers of the offline CPL methods (dpa_omf, dpa_adef; dpa_omf/jobs/align.py). The defaults are the paper's.
    c.credit = "scene"  # 'scene': one label per joint rollout | 'agent' (dpa_omf): each agent ranks the rollouts by
    # its own OT distance and is scored alone, S_i = alpha * sum_t gamma^t log pi(a_t^i | ...)
    c.offline_loss = "pairs"  # 'pairs' (pairs_per_scene (k-th best, k-th worst) pairs) | 'top_bottom'
    # (pairs_per_scene closest x as many farthest, every cross pair) | 'ranked' (ranked CPL over ranked_rollouts)
    c.ranked_rollouts = 0  # 'ranked': rollouts decoded per scene per step (0: all curate.num_rollouts)
    c.kl_weight = 0.0  # per-token KL(policy || reference) on the trained sequences (0: off)
    c.reference_ratio = False  # score log pi - log pi_ref (DPO-style anchor)
    c.eval_agent_weight = 1.0  # weight of the agents WOSAC evaluates (eval_mask) against the others (1: none)
    # Online DPA-OMF (method 'online'): align.num_steps rounds of align.batch_size scenes. At the main job's
    # sizes 16 rollouts per scene per round sample as many rollouts as offline curation does (40 rounds x 8
    # scenes x 16 = 80 curated scenes x 64), and with steps_per_round=1 the same number of updates.
    c.online = ml_collections.ConfigDict()
    c.online.num_rollouts = 16
    c.online.top_k = 4  # K of each round's ranking: the K closest vs the K farthest (as curate.top_k)
    c.online.rollout_chunk = 16
    c.online.steps_per_round = 1
    c.online.loss = "pairs"  # 'pairs' (pairs_per_scene of the K pairs per update) | 'ranked' (every ordered pair)
    # Per-token KL(policy || reference) on the trained sequences (0: off). 1.0: without it online DPA-OMF
    # over-optimizes at this lr (composite -0.057 vs +0.006 with it, 2 seeds; BUILD_NOTES "Online DPA-OMF").
    c.online.kl_weight = 1.0
    c.online.reference_ratio = False  # score log pi - log pi_ref (DPO-style anchor)
    # CAT-K (method 'catk'): pairs_per_scene closest-among-top-K rollouts of the reference per scene per step.
    c.catk_top_k = 32
    c.batch_size = 8  # scenes per global batch
    c.num_steps = 40  # sized for the main job's 20-minute CPU budget (BUILD_NOTES: alignment tuning)
    c.log_every = 10
    c.eval_every = 20
    c.eval_batches = 2
    c.realism_scenes = 4  # WOSAC realism of the first N held-out scenes at every evaluation (0 = off)
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.preemption_sync_every = 10  # as pretrain.preemption_sync_every
    c.progress_bar = True
    # lr chosen by the powered study on its validation block (docs/results/alignment.md: of 1e-4, 3e-4 and 1e-3,
    # DPA-OMF gains +0.0125 / +0.0071 / +0.0003 over the reference); :smoke keeps 1e-3 (4 steps must move it)
    c.optim = optim_config.optim(learning_rate=1e-4, end_lr_ratio=0.1, weight_decay=0.0)
    if "smoke" in variants:
        c.batch_size = 8
        c.pairs_per_scene = 2
        c.num_steps = 4
        c.log_every = 1
        c.eval_every = 2
        c.eval_batches = 1
        c.checkpoint_every = 2
        c.progress_bar = False
        c.optim.warmup_steps = 1
        c.optim.learning_rate = 1e-3
        c.sft_top_k = 2  # of curate's 8 rollouts at :smoke
        c.online.num_rollouts = 8  # = curate's at :smoke (round 0 then ranks as curation did)
        c.online.top_k = 2
        c.online.rollout_chunk = 8
        c.catk_top_k = 8
    return c


def evaluate(variants: set[str]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_rollouts = 32  # per held-out scene, as the challenge
    c.rollout_chunk = 32  # all 32 together (as curate's: 1.2x faster than 16 on a 2-core CPU)
    # Held-out scenes (the first of the valid split; 0 = every scene, the :womd default). 128: the per-scene paired
    # difference to the reference has an SD of ~0.03, so its 95% interval is about +-0.005, below the gain it resolves.
    c.num_scenes = 128
    # The first of them: scenes first_scene .. first_scene + num_scenes - 1 of the valid split. A study selects
    # learning rates on a validation block (e.g. 256..319) and reports on a test block (0..255).
    c.first_scene = 0
    c.scenes_per_chunk = 8  # scenes per file of per-scene results (the unit processes split and a restart skips)
    c.scenes_per_device = 1  # scenes each device scores per step (speed only, not fingerprinted)
    # The realism metric's static sizes fitted to every scene of the job: one compiled program for every chunk
    # (compiling is ~60 s per program on a 2-core CPU); False: fitted per chunk (less map-search work per scene
    # when the maps differ a lot, as on WOMD, but one program per distinct size).
    c.sizes_per_job = True
    c.challenge = "2024"  # '2024' (the paper's table) or '2025'
    # The realism metric's settings (dpa_omf/metrics/wosac.py: RealismConfig; exact whatever their values, except
    # max_eval_agents): evaluated-agent slots per scene (WOMD: the SDC and at most 8 tracks to predict; more are
    # flagged eval_overflow and ignored), rollouts processed together (memory vs speed), road-edge and lane slots
    # after compaction (0: every road-graph slot), the road-edge index (grid cells per side, 0: exhaustive search;
    # candidates per cell) and the lane search of the traffic-light feature (lanes per block, 0: exhaustive; blocks
    # searched).
    c.max_eval_agents = 16
    c.rollout_batch = 8
    c.max_road_edge_points = 0
    c.max_lane_points = 0
    c.road_edge_grid = 64
    c.road_edge_candidates = 64
    c.lane_block = 32
    c.lane_blocks_searched = 32
    c.seed = 0  # rollout sampling seed (combined with the global seed); the same for every model
    c.temperature = 1.0
    c.top_p = 1.0
    # More rows, each a model sampled at another setting with the same rollout keys: 'model@tT,pP' entries joined
    # by ';' (model: reference or an alignment method; '' none). The defaults are the settings the powered study
    # chose on its validation block (docs/results/alignment.md): the reference sharpened, the sharpening control any
    # gain must beat, and DPA-OMF at its own best. ~100 s per row on 128 scenes of a 2-core CPU.
    c.sampled = "reference@t0.85,p0.9;dpa_omf@t0.7,p0.95"
    if "smoke" in variants:
        c.num_rollouts = 4
        c.rollout_chunk = 4
        c.num_scenes = 2
        c.sampled = ""
    if "womd" in variants:
        c.num_scenes = 0  # every scene of the held-out split (44k on WOMD validation), split over processes
        c.scenes_per_chunk = 32
        c.scenes_per_device = 4
        c.sizes_per_job = False  # 44k scenes: compiling is negligible, a map fitted to the largest is not
    return c


def submit(variants: set[str]) -> ml_collections.ConfigDict:
    """The WOSAC submission: 32 joint rollouts of every sim agent of every scenario, as the challenge's shards."""
    c = ml_collections.ConfigDict()
    c.model = "dpa_omf"  # 'reference' (the pretrained checkpoint) or an alignment method (must be align.method)
    c.split = "valid"  # the data's split ('valid' or 'train'), used when scenario_pattern is empty
    c.scenario_pattern = ""  # Scenario-proto (or tf.Example) TFRecords, e.g. WOMD testing/*.tfrecord*; overrides split
    c.max_scenarios = 0  # the first scenarios only (0 = all); a trial run, never an upload
    # Agent slots of the submission's scenes (0 = data.num_agents). Every agent valid at the current step must fit;
    # a scenario with more is refused (never dropped). The parameters do not depend on it (32-slot reference, 128).
    c.num_agents = 0
    c.num_rollouts = 32  # the challenge's count (checked)
    # Rollouts sampled together (bounds memory; the tokens do not depend on it). 32 samples 1.2x faster than 16 on
    # a 2-core CPU (docs/benchmarks.md, "Rollout chunk"); 64 adds nothing more.
    c.rollout_chunk = 32
    c.temperature = 1.0
    c.top_p = 1.0
    c.seed = 0  # rollout seed, combined with the global seed; keys fold in the global scenario index
    # ~40 KB per sim agent per scenario (32 x 80 x 4 float32), ~2.5 MB for a typical WOMD scenario: 100 per shard
    # keeps each file near 250 MB (WOMD testing: ~450 shards).
    c.scenes_per_shard = 100
    # Submission metadata (SimAgentsChallengeSubmission). account_name must be the challenge account's e-mail:
    # the job refuses to run without it.
    c.account_name = ""
    c.unique_method_name = ""  # '' = 'dpa_omf_<submit.model>'
    c.authors = ()
    c.affiliation = ""
    c.description = ""  # '' = DESCRIPTIONS[reference or aligned], naming the method
    c.method_link = ""
    c.uses_lidar_data = False
    c.uses_camera_data = False
    c.uses_public_model_pretraining = False
    c.public_model_names = ()
    c.num_model_parameters = ""  # '' = the checkpoint's own count, e.g. '1.05M'
    c.acknowledge_complies_with_closed_loop_requirement = True  # tokens sampled step by step from the model's own past
    if "smoke" in variants:
        c.max_scenarios = 4
        c.scenes_per_shard = 2
        c.rollout_chunk = 32
    return c
