"""HDF5 shard writer/reader: schema, reproducible bytes, atomic names, academic-budget-bert compatibility."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pretraining.atomic import sha256_file, write_json_atomic
from pretraining.data.shards import (
    list_shards, read_manifest, read_shard, write_shard,
)
from pretraining.errors import UserError


def _rows(n=5, seq=16, pred=4, nsp=False):
    rng = np.random.default_rng(0)
    rows = {
        "input_ids": rng.integers(1000, 3000, (n, seq)).astype(np.int32),
        "input_mask": np.ones((n, seq), np.int8),
        "segment_ids": np.zeros((n, seq), np.int8),
        "masked_lm_positions": np.tile(np.arange(1, pred + 1, dtype=np.int32), (n, 1)),
        "masked_lm_ids": rng.integers(1000, 3000, (n, pred)).astype(np.int32),
    }
    if nsp:
        rows["next_sentence_labels"] = (np.arange(n) % 2).astype(np.int8)
    return rows


def test_write_read_roundtrip_exact_dtypes_and_reproducible_bytes(tmp_path):
    rows = _rows(nsp=True)
    first = write_shard(tmp_path / "train_shard_00000.hdf5", rows)
    second = write_shard(tmp_path / "again.hdf5", {k: v.astype(np.int64) for k, v in rows.items()})
    assert first == second == sha256_file(tmp_path / "again.hdf5")  # same bytes whatever the input dtype / time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.hdf5", "train_shard_00000.hdf5"]  # no temp file
    with h5py.File(tmp_path / "train_shard_00000.hdf5") as f:
        assert {k: f[k].dtype.name for k in f} == {
            "input_ids": "int32", "input_mask": "int8", "segment_ids": "int8", "masked_lm_positions": "int32",
            "masked_lm_ids": "int32", "next_sentence_labels": "int8"}
    loaded = read_shard(tmp_path / "train_shard_00000.hdf5")
    for key, value in rows.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_reads_academic_budget_bert_shards_and_names(tmp_path):
    rows = _rows(n=3, nsp=True)
    for name in ("train_shard_10.hdf5", "train_shard_2.hdf5", "test_shard_0.hdf5", "train_shard_1.hdf5"):
        with h5py.File(tmp_path / name, "w") as f:  # their writer: gzip, int32 ids, int8 masks
            for key, dtype in (("input_ids", "i4"), ("input_mask", "i1"), ("segment_ids", "i1"),
                               ("masked_lm_positions", "i4"), ("masked_lm_ids", "i4"), ("next_sentence_labels", "i1")):
                f.create_dataset(key, data=rows[key], dtype=dtype, compression="gzip")
    (tmp_path / ".train_shard_3.hdf5.123.tmp").write_bytes(b"partial")
    assert [p.name for p in list_shards(tmp_path)] == ["train_shard_1.hdf5", "train_shard_2.hdf5", "train_shard_10.hdf5"]
    assert [p.name for p in list_shards(tmp_path, "test")] == ["test_shard_0.hdf5"]
    assert read_manifest(tmp_path) is None
    np.testing.assert_array_equal(read_shard(tmp_path / "train_shard_2.hdf5")["next_sentence_labels"],
                                  rows["next_sentence_labels"])


def test_list_shards_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_shards(tmp_path / "missing")
    write_shard(tmp_path / "train_shard_00000.hdf5", _rows())
    with pytest.raises(UserError, match="no test shards"):
        list_shards(tmp_path, "test")


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot read shard .*bad.hdf5"),
    ("text", "cannot read shard .*bad.hdf5"),
    ("missing_key", "missing key 'segment_ids'"),
    ("wrong_width", "masked_lm_ids has shape"),
    ("float", "input_mask has dtype float32"),
    ("half_mlm", "both be present"),
])
def test_damaged_shards_raise_user_error_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "bad.hdf5"
    rows = _rows()
    if damage == "truncate":
        write_shard(path, rows)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "text":
        path.write_text("not an hdf5 file")
    else:
        if damage == "missing_key":
            del rows["segment_ids"]
        elif damage == "wrong_width":
            rows["masked_lm_ids"] = rows["masked_lm_ids"][:, :2]
        elif damage == "float":
            rows["input_mask"] = rows["input_mask"].astype(np.float32)
        else:
            del rows["masked_lm_ids"]
        with h5py.File(path, "w") as f:
            for key, value in rows.items():
                f.create_dataset(key, data=value)
    with pytest.raises(UserError, match=message) as info:
        read_shard(path)
    assert "bad.hdf5" in str(info.value)


def test_manifest_of_an_interrupted_run_is_refused(tmp_path):
    (tmp_path / ".work").mkdir()  # what a killed prepare_dataset.py leaves
    write_shard(tmp_path / "train_shard_00000.hdf5", _rows())
    with pytest.raises(UserError, match="incomplete.*rerun"):
        read_manifest(tmp_path)
    write_json_atomic(tmp_path / "manifest.json", {"seed": 1})
    assert read_manifest(tmp_path)["seed"] == 1
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_manifest(tmp_path)
