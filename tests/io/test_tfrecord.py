"""TFRecord framing: errors name the file and the record (CRC, truncation, TF fallback), atomic writes."""

import numpy as np
import pytest

from dpa_omf.io import example_writer, reader, tfrecord
from dpa_omf.io.tfrecord import DataError
from dpa_omf.testing.womd import random_scenario


def _write(tmp_path, records, name="bad.tfrecord"):
    path = tmp_path / name
    tfrecord.write_records(path, records)
    return path


def test_corrupted_crc_names_file_and_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = bytearray(path.read_bytes())
    second = tfrecord.index_records(path)[1]
    raw[second + 12 + 500] ^= 0x40  # a payload byte of record 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 1: corrupted record") as e:
        list(reader.read_scenes(path))
    assert e.value.path == str(path) and e.value.record == 1

def test_corrupted_length_names_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = bytearray(path.read_bytes())
    raw[tfrecord.index_records(path)[2] + 1] ^= 0x01  # the length field of record 2
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 2: corrupted record header"):
        tfrecord.index_records(path)
    with pytest.raises(DataError, match=r"record 2: corrupted record header"):
        list(reader.read_scenes(path))

def test_truncated_file_names_record(tmp_path, three_records):
    path = _write(tmp_path, three_records)
    raw = path.read_bytes()
    cut = tfrecord.index_records(path)[2] + 12 + 100
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError, match=r"bad\.tfrecord: record 2: truncated file"):
        list(reader.read_scenes(path))
    with pytest.raises(DataError, match=r"record 2: truncated file"):
        tfrecord.index_records(path)

def test_tensorflow_fallback_reader_errors(tmp_path, three_records, monkeypatch):
    """Without a native CRC the TF C++ reader is used; its errors are rewrapped the same way."""
    monkeypatch.setattr(tfrecord, "_native_crc", None)
    monkeypatch.setattr(tfrecord, "_native_crc_resolved", True)
    path = _write(tmp_path, three_records)
    assert len(list(reader.read_scenes(path))) == 3
    raw = bytearray(path.read_bytes())
    raw[tfrecord.index_records(path)[1] + 12 + 50] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"record 1: corrupted record"):
        list(reader.read_scenes(path))

def test_native_crc_matches_reference():
    fn = tfrecord.native_crc32c()
    if fn is None:
        pytest.skip("no native CRC-32C here: the TensorFlow reader is used")
    data = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    assert fn(data) == tfrecord.crc32c(data)

def test_write_is_atomic(tmp_path, rng):
    def scenes():
        yield random_scenario(rng, 8, 100)
        raise RuntimeError("generator failed")

    path = tmp_path / "partial.tfrecord"
    with pytest.raises(RuntimeError):
        example_writer.write_tfrecord(path, scenes())
    assert not path.exists() and not list(tmp_path.iterdir())
