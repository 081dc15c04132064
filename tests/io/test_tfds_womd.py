"""The TFDS ``womd`` builder: manual-dir shards -> fixed-shape Scenario features, equal to the reader's."""

import jax
import tensorflow_datasets as tfds

from dpa_omf import datatypes as dt
from dpa_omf.io import example_writer, fit, reader, tfds_womd, womd_example
from dpa_omf.io.tfrecord import Source
from dpa_omf.testing.womd import random_scenario, tree_equal


def test_tfds_builder_from_manual_dir(tmp_path, rng):
    manual = tmp_path / "manual"
    scenes = {}
    for split, name in (("train", "training"), ("validation", "validation")):
        batch = [random_scenario(rng, 12, 200, f"{split}-{i}") for i in range(3)]
        scenes.update({f"{split}-{i}": s for i, s in enumerate(batch)})
        example_writer.write_tfrecord(manual / f"womd_{name}.tfrecord-00000-of-00001", batch)
    builder = tfds_womd.Womd(config=tfds_womd.WomdConfig(name="tiny", max_agents=16, max_roadgraph_points=256),
                             data_dir=str(tmp_path / "data"))
    assert builder.name == "womd"
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    assert builder.info.splits["train"].num_examples == 3
    assert builder.info.splits["validation"].num_examples == 3
    got = {}
    for ex in tfds.as_numpy(builder.as_dataset(split="validation", batch_size=3)):
        batch = tfds_womd.features_to_scenario(ex)
        for k in range(batch.agents.valid.shape[0]):
            s = jax.tree.map(lambda x, k=k: x[k], batch)
            got[dt.scenario_id_str(s.scenario_id)] = s
    assert sorted(got) == ["validation-0", "validation-1", "validation-2"]
    cfg = reader.ReaderConfig(max_agents=16, max_roadgraph_points=256)
    for sid, s in got.items():
        ref, _ = fit.fit_scenario(scenes[sid], 16, 256, reader.RecordInfo(Source(sid), "example", 12))
        assert tree_equal(s, ref), sid
        record = example_writer.scenario_to_example(scenes[sid])
        assert tree_equal(s, womd_example.parse_example(record, Source(sid), cfg))
