"""Bad input to the scripts: exit code 2 and one message naming the problem and the fix, never a traceback.

Damaged data is made from the real tiny shards (truncated, not HDF5, corrupt bytes, wrong
schema, foreign vocabulary, other lengths). The cases other suites already cover are
listed in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pretraining.data.shards import read_shard, write_shard

pytestmark = pytest.mark.usefixtures("single_thread")


def fails_cleanly(main, argv, capsys) -> str:
    """Run a script's ``main(argv)``: it must exit with code 2 and print one error; returns that error onwards."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(re.findall(r"(^|: )error: ", err, re.M)) == 1, err[-3000:]
    return err[err.index("error: "):]


def _truncate(folder: Path) -> None:
    path = folder / "train_shard_00002.hdf5"
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _not_hdf5(folder: Path) -> None:
    (folder / "train_shard_00002.hdf5").write_bytes(np.random.default_rng(0).bytes(30000))


def _corrupt_bytes(folder: Path) -> None:  # inside the compressed data: the file opens, a read fails
    path = folder / "train_shard_00002.hdf5"
    data = bytearray(path.read_bytes())
    data[5000:5100] = bytes(b ^ 0xFF for b in data[5000:5100])
    path.write_bytes(bytes(data))


def _missing_keys(folder: Path) -> None:
    path = folder / "train_shard_00002.hdf5"
    path.unlink()
    with h5py.File(path, "w") as f:
        f["input_ids"] = np.zeros((100, 64), np.int32)


def _float_ids(folder: Path) -> None:
    path = folder / "train_shard_00002.hdf5"
    rows = read_shard(path)
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in rows.items():
            f[key] = value.astype(np.float32) if key == "input_ids" else value


def _foreign_vocabulary(folder: Path) -> None:  # shards of a larger tokenizer, without a manifest saying so
    (folder / "manifest.json").unlink()
    for path in folder.glob("train_shard_*.hdf5"):
        rows = read_shard(path)
        rows["input_ids"][:, 5] = 40000
        path.unlink()
        write_shard(path, rows)


def _mixed_lengths(folder: Path) -> None:
    path = folder / "test_shard_00000.hdf5"
    rows = read_shard(path)
    path.unlink()
    write_shard(path, {k: v[:, :32] if k in ("input_ids", "input_mask", "segment_ids") else v for k, v in rows.items()})


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"cannot read shard \S+train_shard_00002.hdf5: .*truncated file.*rerun prepare_dataset.py"),
    (_not_hdf5, r"cannot read shard \S+train_shard_00002.hdf5: .*file signature not found"),
    (_corrupt_bytes, r"cannot read shard \S+train_shard_00002.hdf5: .*\(truncated or corrupt file\?"),
    (_missing_keys, r"train_shard_00002.hdf5 is not a pretraining shard: missing key 'input_mask'"),
    (_float_ids, r"train_shard_00002.hdf5 has a wrong schema: input_ids has dtype float32, expected int32"),
    (_foreign_vocabulary, r"train_shard_0000\d.hdf5 holds token id 40000, outside the model's vocabulary of 30522.*"
                          r"set --vocab_size 40001"),
    (_mixed_lengths, r"the shards have different sequence lengths \(test_shard_00000.hdf5: 32, train_shard_00000.hdf5: "
                     r"64\).*one prepare_dataset.py output per --dataset_path"),
])
def test_damaged_shards_are_one_clear_error(damage, message, tiny_shards, pretrain_flags, tmp_path, capsys):
    from run_pretraining import main

    data = tmp_path / "shards"
    shutil.copytree(tiny_shards, data)
    damage(data)
    # four one-step epochs: every train shard is read
    err = fails_cleanly(main, pretrain_flags("--max_steps_per_epoch", "2", "--num_epochs", "4", "--do_validation",
                                             dataset=data), capsys)
    assert re.search(message, err, re.S), err


@pytest.mark.parametrize("flags, message", [
    (["--max_position_embeddings", "32"], r"the shards hold sequences of 64 tokens, more than the model's "
                                          r"--max_position_embeddings 32: set --max_position_embeddings 64"),
    (["--optimizer_type", "sgd"], r"--optimizer_type 'sgd' is not one of: adafactor, adam, adamw, customized, lamb"),
    (["--lr_schedule", "cosine"], r"--lr_schedule.*invalid choice: 'cosine' \(choose from 'time', 'step', "
                                  r"'constant_step'\)"),
    (["--data_loader_type", "sharded"], r"--data_loader_type.*invalid choice: 'sharded'"),
    (["--train_micro_batch_size_per_gpu", "6"], r"--train_batch_size 16 is not a multiple of "
                                                r"--train_micro_batch_size_per_gpu 6"),
    (["--load_training_checkpoint", "{tmp}/nowhere"], r"--load_training_checkpoint \S+nowhere does not exist"),
    (["--model_name_or_path", "{tmp}"], r"--model_name_or_path '\S+' could not be loaded"),
    (["--tokenizer_name", "{tmp}"], r"tokenizer '\S+' could not be loaded"),
])
def test_bad_flags_are_one_clear_error(flags, message, pretrain_flags, tmp_path, capsys):
    from run_pretraining import main

    argv = pretrain_flags("--max_steps", "1", *[f.format(tmp=tmp_path / "empty") for f in flags])
    (tmp_path / "empty").mkdir()
    err = fails_cleanly(main, argv, capsys)
    assert re.search(message, err, re.S), err


def test_a_missing_deepspeed_config_is_one_clear_error(pretrain_flags, tmp_path, capsys, deepspeed_ready):
    """(deepspeed_ready: DeepSpeed's comm op, built once per venv in ~40 s, is built or loaded in the set-up.)"""
    from run_pretraining import main

    err = fails_cleanly(main, pretrain_flags("--max_steps", "1", "--deepspeed", "--deepspeed_config",
                                             str(tmp_path / "ds.json")), capsys)
    assert re.search(r"--deepspeed_config \S+ds.json does not exist", err), err


def test_an_arguments_file_that_is_not_json_is_one_clear_error(tmp_path, capsys):
    from run_pretraining import main

    path = tmp_path / "args.json"
    path.write_text("{'lr': 0.1,}")
    assert re.match(r"error: argument file \S+args.json is not valid JSON", fails_cleanly(main, [str(path)], capsys))


def test_prepare_refuses_an_output_dir_of_foreign_shards(tmp_path, capsys):
    from prepare_dataset import main

    (tmp_path / "train_shard_00000.hdf5").write_bytes(b"someone else's file")
    err = fails_cleanly(main, ["--output_dir", str(tmp_path), "--max_documents", "50", "--num_workers", "1"], capsys)
    assert "already holds shard files without a manifest.json" in err and "--overwrite" in err
    assert (tmp_path / "train_shard_00000.hdf5").read_bytes() == b"someone else's file"
    assert sorted(os.listdir(tmp_path)) == ["train_shard_00000.hdf5"]


# --- run_glue.py -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--model_name_or_path", "{tmp}/missing", "--task_name", "rotten_tomatoes"],
     r"error: model folder \S+missing does not exist; check --model_name_or_path"),
    (["--model_name_or_path", "{no_tokenizer}", "--task_name", "rotten_tomatoes"],
     r"error: \S+no-tokenizer holds no tokenizer \(tokenizer.json or vocab.txt\); pass --tokenizer_name"),
    (["--model_name_or_path", "{export}", "--tokenizer_name", "./missing-tokenizer", "--task_name", "rotten_tomatoes"],
     r"error: tokenizer folder ./missing-tokenizer does not exist; check --tokenizer_name"),
    (["--model_name_or_path", "{export}", "--train_file", "{tmp}/reviews.csv", "--text_columns", "review"],
     r"error: \S+reviews.csv has no label column 'label'.*its columns are"),
    pytest.param(["--model_name_or_path", "{export}", "--task_name", "rotten_tomatoes", "--fp16"],
                 r"error: --fp16 needs a GPU .*use --bf16 or neither",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid on a GPU")),
])
def test_run_glue_bad_input_is_one_clear_error(flags, message, tiny_exports, tmp_path, capsys):
    from run_glue import main

    export = tiny_exports["post-ln"]
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(export / name, no_tokenizer / name)
    (tmp_path / "reviews.csv").write_text("review,stars\na fine film,1\na dull film,0\n")
    argv = [f.format(tmp=tmp_path, export=export, no_tokenizer=no_tokenizer) for f in flags]
    err = fails_cleanly(main, [*argv, "--do_train", "--output_dir", str(tmp_path / "out"), "--report_to", "none"],
                        capsys)
    assert re.search(message, err, re.S), err
    assert not (tmp_path / "out").exists()
