"""The research result: every alignment method over several seeds, with intervals over seeds and scenes.

    python -m dpa_omf.study --workdir=DIR [--seeds=0,1,2]
        [--methods=dpa_omf,sft_best_oa,dpa_adef,afd] [--shared_from=MAIN_WORKDIR]
        [--lrs=3e-4,1e-3,3e-3 --val_scenes=64 --test_scenes=256]
        [--arm=[GROUP/]NAME:key=value[;key=value] ...] [--results_dir=docs/results]
        [--suite=quick|paper|powered|...] [--rows_from=OTHER_RESULTS_DIR ...]
        [--config=configs/align.py] [-- --config.key=value ...]

Blocks. With ``--test_scenes`` the held-out (valid) split is cut in two: the
TEST block (scenes ``0 .. test_scenes - 1``), on which every reported number
is measured, and the VALIDATION block of ``--val_scenes`` scenes after it,
used only for choices: the learning rate per method (``--lrs``; each method
aligned once per rate, first seed, ``DIR/sweep/lr_<lr>``; or a suite's
``rates``, recorded from an earlier sweep), the levers, and
the sampling setting of the sharpening rows. A suite grows the synthetic
valid split through its overrides (``data.synthetic.num_valid``).

Protocol. One synthetic world, one reference model and one curated
preference set (the main job's stages ``data``, ``pretrain`` and ``curate``,
global seed fixed) are shared by every run; a seed ``s`` sets ``align.seed``
(the order of the preference pairs) and ``evaluate.seed`` (the rollout keys:
every model of a seed, in every folder, is scored with the same keys on the
same scenes, so every comparison is paired). Per seed the study runs the main
job once per method (``DIR/seed_<s>``; the evaluate stage caches per model).
Intervals (95%): the ``[seeds, scenes]`` per-scene composites are resampled
over seeds and scenes together (``metrics.stats``' two-level bootstrap), for
each level and each paired difference; the report states the smallest
difference the protocol detects, from the measured spread of DPA-OMF minus
the reference between scenes and between seeds.

Rows beyond the methods (``suites``):
- arms (``--config`` overrides): the feature ablation and the data scale
  (``DIR/arms/<arm>/seed_<s>``, every seed); levers (``DIR/levers/<arm>``,
  validation, first seed), of which the best per group that beats DPA-OMF
  are kept and run together as ``dpa_omf[combined]`` on every seed. An arm
  that touches ``curate.*`` curates its own preference data.
- sampling: the reference and DPA-OMF scored on validation at every
  (temperature, top-p) of the suite's grid (``DIR/sampling/val/...``), then
  each at its best setting on the test block (``reference@t..,p..``: the
  sharpening control; ``dpa_omf@t..,p..``: DPA-OMF at its own best), every
  seed (``DIR/sampling/test/...``; their alignment linked, not redone). A
  suite's ``sampling_chosen`` takes the settings an earlier grid chose on the
  same validation block and runs only the test rows.
  The sampling rows (controls) run before the test arms (analyses).
- the compute-matched next-token control is the method ``ntp``.

Outputs: ``DIR/study.json`` and ``DIR/report.md`` (every table: methods,
sweep, levers, sampling grid, Table 2 / 3, Fig. 7, post-selection) with
``DIR/realism_vs_rollouts.png`` and ``DIR/nll_and_kl.png``; and the results
document in ``--results_dir`` (default DIR): ``alignment.json`` (``test_scenes``,
``seeds``, ``models``: ``composite``, ``ci``, ``vs_reference`` {mean, lo, hi};
DPA-OMF's models also ``vs`` {other model: {mean, lo, hi}}), ``alignment.md``
(tables, the protocol's power, each claim's verdict, the validation choices),
``realism_vs_kl.png`` and ``gain_vs_data_scale.png``.

Parts. A study keeps its own rows (every seed's evaluate rows, alignment
figures and per-scene composites) in ``rows.json`` beside ``alignment.json``.
A later study given ``--rows_from`` reports those models beside its own, and
compares DPA-OMF with them, after checking that the two scored the same
scenes with the same keys (same challenge, scenes, rollouts and seeds; the
reference's per-scene composites equal to 1e-6 in every seed). So a protocol
longer than a machine's life runs as parts (the ``powered_*`` suites), each
one command, and the last assembles the report.

Every job is a ``python -m dpa_omf.launch`` subprocess (``runs``): finished
stages are reused, an interrupted study resumes where it stopped, and a
preempted job stops the study with exit code 75 (run the same command again).
Each job run appends its wall and CPU time to ``study_job_times.jsonl`` in its
workdir as it ends, each study command its own to ``DIR/time.jsonl``; the
report gives the protocol's total, however often it was resumed.
Modules: ``suites`` (presets, arms), ``runs`` (the jobs and their folders),
``results`` (aggregation, ``alignment.json``), ``tables`` (markdown),
``figures``, ``cli`` (the steps' order).
"""
