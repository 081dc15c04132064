"""What a study runs: methods, seeds, blocks, arms (config overrides), sampling grid; the presets (``SUITES``).

An *arm* is a variant of DPA-OMF declared as config overrides (``--config.key=value`` flags), so any option of
the config (the alignment's ``align.*``, the curation's ``curate.*``) becomes an arm without code. Its
``table`` says where it runs and is reported:

- ``features`` / ``data``: the paper's Table 2 (feature ablation) and Fig. 7 (preference-data scale); every
  seed, test block.
- ``levers``: a candidate lever, measured on the validation block (first seed); per ``group`` the best arm
  that beats DPA-OMF on validation is kept, and the kept arms' overrides together form the arm ``combined``,
  which then runs every seed on the test block. Arms of one group are alternatives (e.g. two learning
  rates); arms of different groups must set different keys.

An arm whose overrides touch ``curate.*`` curates its own preference data; the others reuse the shared one.
"""

from __future__ import annotations

import argparse
import dataclasses

from dpa_omf.jobs import align

# The study's method choices come from the method registry (align.METHODS), which lists no method twice.
DEFAULT_METHODS = tuple(name for name, m in align.METHODS.items() if m.study_default)
ALL_METHODS = tuple(align.METHODS)
TABLES = ("features", "data", "levers")
COMBINED = "combined"
# The sharpening control's grid: (temperature, top-p) of the evaluation's sampling, the best chosen on validation.
SHARPENING_GRID = tuple((t, p) for t in (0.7, 0.85, 1.0) for p in (0.9, 0.95, 1.0))


@dataclasses.dataclass(frozen=True)
class Arm:
    """A variant of DPA-OMF: config ``overrides`` (``--config.key=value``), reported in ``table``
    (module docstring); ``group``: levers that are alternatives of each other (default: the name)."""

    name: str
    overrides: tuple[str, ...]
    table: str
    group: str = ""

    def __post_init__(self):
        if self.table not in TABLES:
            raise ValueError(f"arm {self.name}: table {self.table!r} is not one of {TABLES}")
        bad = [o for o in self.overrides if not o.startswith("--config.") or "=" not in o]
        if bad:
            raise ValueError(f"arm {self.name}: overrides must be --config.key=value flags, got {bad}")

    @property
    def curates(self) -> bool:
        """Whether the arm needs its own preference data."""
        return any(o.startswith("--config.curate.") for o in self.overrides)

    @property
    def curate_overrides(self) -> tuple[str, ...]:
        """The overrides that decide the arm's preference data (two arms with the same ones share it)."""
        return tuple(sorted(o for o in self.overrides if o.startswith("--config.curate.")))

    @property
    def group_name(self) -> str:
        return self.group or self.name


@dataclasses.dataclass(frozen=True)
class Suite:
    """A study preset: what ``--suite`` runs (see the package docstring)."""

    config: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...] = ()
    val_scenes: int = 0
    test_scenes: int = 0
    extra: tuple[str, ...] = ()
    arms: tuple[Arm, ...] = ()
    post_selection: tuple[int, int] | None = None  # (scenes, group size)
    sampling: tuple[tuple[float, float], ...] = ()  # the sharpening control's (temperature, top-p) grid
    # Per method, a learning rate an earlier validation sweep chose (used when ``lrs`` is empty): (method, lr)
    rates: tuple[tuple[str, float], ...] = ()
    rates_source: str = ""  # where that sweep is recorded (the report cites it)
    # Per model ("reference", "dpa_omf"), the sampling setting an earlier grid on this validation block chose
    # (used when ``sampling`` is empty): (model, (temperature, top-p)); its test rows run without the grid
    sampling_chosen: tuple[tuple[str, tuple[float, float]], ...] = ()
    sampling_source: str = ""  # where that grid is recorded (the report cites it)


def parse_arm(text: str) -> Arm:
    """``[GROUP/]NAME:key=value[;key=value...]`` (keys under ``config.``) -> a ``levers`` arm."""
    head, sep, body = text.partition(":")
    if not sep or not body:
        raise ValueError(f"--arm {text!r}: expected [GROUP/]NAME:key=value[;key=value...]")
    group, _, name = head.rpartition("/")
    return Arm(name, tuple(f"--config.{kv.strip().removeprefix('--config.')}" for kv in body.split(";") if kv),
               "levers", group)


def weights(w: tuple[float, ...]) -> str:
    return "--config.curate.feature_weights=(" + ",".join(f"{float(x):.1f}" for x in w) + ")"


def scale_arms(base_rankings: float, factors=(0.5, 2, 4)) -> tuple[Arm, ...]:
    """Fig. 7's data sizes (factors of the main job's rankings per training scene)."""
    return tuple(Arm(f"data_{f:g}x", (f"--config.curate.rankings_per_example={base_rankings * f:g}",), "data")
                 for f in factors)


def feature_arms() -> tuple[Arm, ...]:
    """Table 2's feature subsets (weights of collision, road distance, clearance, effort, speed)."""
    return (Arm("collision_only", (weights((10, 0, 0, 0, 0)),), "features"),
            Arm("progress_only", (weights((0, 0, 0, 0, 1)),), "features"),
            Arm("comfort_only", (weights((0, 0, 0, 1, 0)),), "features"))


def lever_arms(base_rankings: float) -> tuple[Arm, ...]:
    """Issue 20's levers as arms: preference-data scale, optimizer, anchors, the use of every ranked rollout,
    per-agent credit, cost scaling and the weight of the evaluated agents (``dpa_omf/configs/post_training.py``
    documents each key). The data-scale lever is the data table's ``data_4x`` arm, whose curation the test rows
    then reuse."""
    return (Arm("data_4x", (f"--config.curate.rankings_per_example={base_rankings * 4:g}",), "levers", "data_scale"),
            Arm("warmup_0", ("--config.align.optim.warmup_steps=0",), "levers", "warmup"),
            Arm("warmup_20", ("--config.align.optim.warmup_steps=20",), "levers", "warmup"),
            Arm("steps_80", ("--config.align.num_steps=80",), "levers", "steps"),
            Arm("weight_decay_0.01", ("--config.align.optim.weight_decay=0.01",), "levers", "weight_decay"),
            Arm("bc_0.1", ("--config.align.bc_weight=0.1",), "levers", "bc"),
            Arm("bc_1", ("--config.align.bc_weight=1.0",), "levers", "bc"),
            Arm("kl_0.1", ("--config.align.kl_weight=0.1",), "levers", "kl"),
            Arm("kl_1", ("--config.align.kl_weight=1.0",), "levers", "kl"),
            Arm("reference_ratio", ("--config.align.reference_ratio=True",), "levers", "ratio"),
            Arm("ranked_16", ("--config.align.offline_loss=ranked", "--config.align.ranked_rollouts=16"),
                "levers", "every_rollout"),
            Arm("top_bottom", ("--config.align.offline_loss=top_bottom",), "levers", "every_rollout"),
            Arm("agent_credit", ("--config.align.credit=agent",), "levers", "credit"),
            Arm("eval_agents_x3", ("--config.align.eval_agent_weight=3.0",), "levers", "eval_weight"),
            Arm("cost_expert_std", ("--config.curate.feature_scaling=expert_std",), "levers", "cost"),
            Arm("cost_quadratic", ("--config.curate.weight_mode=quadratic",), "levers", "cost"))


SUITES = {
    # Every method, a 3-rate sweep on 64 validation scenes, 256 test scenes x 32 rollouts, 3 seeds, every arm
    # and analysis, at the main job's sizes (BUILD_NOTES: its duration on the project's 2-core CPU).
    "paper": Suite("configs/align.py", ALL_METHODS, (0, 1, 2), lrs=(3e-4, 1e-3, 3e-3), val_scenes=64,
                   test_scenes=256, extra=("--config.data.synthetic.num_valid=320",),
                   arms=feature_arms() + scale_arms(0.08), post_selection=(32, 8)),
    # Issue 20's powered protocol: the controls (sharpened reference, NTP), the Table 1 baselines with the same
    # learning-rate sweep, the levers chosen on validation and combined, the data scale; 256 test scenes x 3 seeds.
    # Size on the 2-core CPU from BUILD_NOTES' measured stage times of the main job (evaluation 1.2-1.3 min for
    # 2 models x 32 scenes x 32 rollouts, i.e. ~1.2 s per model and scene; alignment 40 steps 3.5-4 min, NTP ~2;
    # curation 5.6 min for 80 scenes, ~4.2 s per scene; data ~1 min), one job at a time, an idle machine:
    #   shared data + curation (80 scenes)                          ~  7 min
    #   lr sweep: 5 methods x 3 rates, validation (64 scenes)        ~ 73 min
    #   levers: 16 arms on validation (steps_80 aligns twice as long,
    #           ranked_16 decodes 4x the sequences, the two cost arms curate again,
    #           data_4x curates 320 scenes, which the data table's data_4x reuses) ~135 min
    #   sampling grid: 9 settings x 2 models, validation            ~ 28 min
    #   3 seeds x (5 alignments + 6 models x 256 scenes)            ~146 min
    #   sharpened reference / DPA-OMF on test, 3 seeds              ~ 31-61 min (one or two settings)
    #   combined levers on test, 3 seeds                            ~ 26 min
    #   data scale 0.5x / 2x / 4x (curation but 4x's + 3 seeds each) ~ 92 min
    #   total                                                       ~9-9.5 h (more when the CPU is shared; the
    #   speed-up of issue 21 is not in these figures)
    # Power: with issue 20's spreads of DPA-OMF - reference (SD ~0.011 between seeds; between scenes at most the
    # levels' ~0.10, less when paired) 3 seeds alone put the detectable difference (95%, 80% power) at
    # 2.80 x 0.011 / sqrt(3) = 0.018, the paper's gain: scenes cannot lower it further, seeds can (5: 0.014, at
    # ~1.5 h each); the report computes it from the measured spreads (``stats.scenes_needed``).
    # It pins the raw-unit cost it was started with (the default became expert_std, chosen by its own lever arm),
    # so its stages keep their fingerprints; an arm's overrides come after these flags and win.
    "powered": Suite("configs/align.py", ("dpa_omf", "ntp", "sft_best_oa", "dpa_adef", "afd"), (0, 1, 2),
                     lrs=(1e-4, 3e-4, 1e-3), val_scenes=64, test_scenes=256,
                     extra=("--config.data.synthetic.num_valid=320", "--config.curate.feature_scaling=none"),
                     arms=lever_arms(0.08) + scale_arms(0.08), sampling=SHARPENING_GRID),
    # The powered protocol's test half, with the choices its validation half made (docs/results/alignment.md,
    # "Choices on the validation block"; study code e4951a5): each method at the learning rate the sweep chose,
    # and the levers reduced to the one kept for the main job, the expert_std cost, which is now the config's
    # default (the other kept levers added +0.0007 +- 0.0033 to it; decisions.md). The sweep was run with the
    # raw-unit cost: DPA-OMF's rate was confirmed with expert_std by the lever arm; DPA-ADEF ranks by ADE, so its
    # data do not change; SFT-bestOA's best rollout and AFD's pairs may. The sharpening grid is chosen here, on
    # the same validation block; then the data scale's test arms (Fig. 7). Size (the estimate above): shared
    # ~7 min, 3 seeds ~146 min, grid ~28 min, sharpened rows on test ~31-61 min, data scale ~92 min plus the 4x
    # curation (~22 min): ~5.5-6 h on the idle 2-core CPU.
    "powered_test": Suite("configs/align.py", ("dpa_omf", "ntp", "sft_best_oa", "dpa_adef", "afd"), (0, 1, 2),
                          val_scenes=64, test_scenes=256, sampling=SHARPENING_GRID, arms=scale_arms(0.08),
                          rates=(("dpa_omf", 1e-4), ("ntp", 1e-4), ("sft_best_oa", 3e-4), ("dpa_adef", 3e-4),
                                 ("afd", 1e-4)),
                          rates_source="docs/results/alignment.md (the powered suite's sweep, raw-unit cost)"),
    # The sharpening control on the test block, with the settings powered_test's grid chose on its validation
    # block (docs/results/alignment.md): the reference at T 0.85, P 0.9 and DPA-OMF at T 0.7, P 0.95, each beside
    # its T 1 row, 3 seeds, 256 test scenes. It repeats powered_test's DPA-OMF and reference rows on the same
    # scenes and keys (a check that the two runs agree) and fits one session of the 2-core CPU: shared ~5 min,
    # 3 x (alignment ~3 min + 2 models x 256 scenes ~10 min), 6 sampled evaluations ~10 min each: ~1.8 h.
    "powered_sharpening": Suite("configs/align.py", ("dpa_omf",), (0, 1, 2), val_scenes=64, test_scenes=256,
                                rates=(("dpa_omf", 1e-4),),
                                rates_source="docs/results/alignment.md (the powered suite's sweep, raw-unit cost)",
                                sampling_chosen=(("reference", (0.85, 0.9)), ("dpa_omf", (0.7, 0.95))),
                                sampling_source="docs/results/alignment.md (powered_test's grid, 64 validation "
                                                "scenes, seed 0, study code 6ef1232)"),
    # The powered protocol's test half in parts that each fit one session of the 2-core CPU (a run folder may not
    # outlive its machine): each writes its rows (``results.ROWS_FILE``), and the last reports them all together
    # (``--rows_from``, which checks that every part scored the same scenes with the same keys). The five methods
    # (3 x (5 alignments + 6 models x 256 scenes), ~2.1 h) and the data scale's arms (~2.2 h, its seeds included).
    "powered_methods": Suite("configs/align.py", ("dpa_omf", "ntp", "sft_best_oa", "dpa_adef", "afd"), (0, 1, 2),
                             val_scenes=64, test_scenes=256,
                             rates=(("dpa_omf", 1e-4), ("ntp", 1e-4), ("sft_best_oa", 3e-4), ("dpa_adef", 3e-4),
                                    ("afd", 1e-4)),
                             rates_source="docs/results/alignment.md (the powered suite's sweep, raw-unit cost)"),
    "powered_scale": Suite("configs/align.py", ("dpa_omf",), (0, 1, 2), val_scenes=64, test_scenes=256,
                           arms=scale_arms(0.08), rates=(("dpa_omf", 1e-4),),
                           rates_source="docs/results/alignment.md (the powered suite's sweep, raw-unit cost)"),
    # The same structure at :smoke sizes, for CPU minutes (its test checks the report's structure).
    "quick": Suite("configs/align.py:smoke", ALL_METHODS, (0, 1), lrs=(1e-3, 3e-3), val_scenes=2, test_scenes=4,
                   arms=(Arm("collision_only", (weights((10, 0, 0, 0, 0)),), "features"),
                         Arm("data_2x", ("--config.curate.rankings_per_example=0.16",), "data"),
                         Arm("warmup_0", ("--config.align.optim.warmup_steps=0",), "levers", "warmup"),
                         Arm("warmup_2", ("--config.align.optim.warmup_steps=2",), "levers", "warmup"),
                         Arm("bc_1", ("--config.align.bc_weight=1.0",), "levers", "anchor")),
                   post_selection=(1, 2), sampling=((0.85, 0.95), (1.0, 1.0))),
}


def apply_suite(suite: Suite | None, args: argparse.Namespace, extra: list[str], given: list[str]) -> list[str]:
    """A suite's settings into ``args`` (``--seeds`` still applies when given); returns the overrides."""
    if suite is None:
        return extra
    if not any(a.startswith("--seeds") for a in given):
        args.seeds = ",".join(map(str, suite.seeds))
    args.methods, args.config = ",".join(suite.methods), suite.config
    args.lrs = ",".join(f"{x:g}" for x in suite.lrs)
    args.val_scenes, args.test_scenes = suite.val_scenes, suite.test_scenes
    return list(suite.extra) + extra
