"""A table of bad inputs fed to every script (issue #26): each must exit non-zero with one error naming the problem,
print no traceback, and leave every file that existed before byte-identical (nothing destroyed, nothing left half
written). The fast tier runs it; the cases that take longer live in their own suites (docs/RELIABILITY.md)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _export(tmp: Path, exports: dict) -> Path:
    folder = tmp / "run" / "pretrained"
    shutil.copytree(exports["pre-ln"], folder)
    return folder


def _damaged(tmp: Path, exports: dict, name: str) -> Path:
    folder = tmp / "damaged"
    folder.mkdir()
    shutil.copy(exports["post-ln"] / "config.json", folder / "config.json")
    (folder / name).write_bytes(np.random.default_rng(0).bytes(5000))
    return folder


def _corpus(tmp: Path, text: bytes = b"a sentence of the corpus.\nanother sentence, and more words.\n") -> Path:
    folder = tmp / "corpus"
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_bytes(text)
    return folder


def _file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a folder\n")
    return tmp / "a_file"


def _parquet_of_ints(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp / "ints.parquet")
    return tmp / "ints.parquet"


def _earlier_run(tmp: Path) -> Path:
    run = tmp / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"lr": 1e-3}))
    (run / "metrics.jsonl").write_text('{"type": "train", "step": 1, "loss": 9.0}\n')
    return run


def _labels(tmp: Path, labels: list[str]) -> Path:
    rows = "".join(f"sentence {i} of the set,{label}\n" for i, label in enumerate(labels))
    (tmp / "labelled.csv").write_text("sentence,label\n" + rows)
    return tmp / "labelled.csv"


# script, argv builder (tmp, fixtures) -> argv, the expected message (regex, searched in the one error line)
CASES: dict[str, tuple[str, Callable, str]] = {
    "convert into its own source": (
        "convert", lambda t, f: [str(_export(t, f["exports"]))] * 2 + ["--to", "academic-budget-bert"],
        r"output \S+pretrained is the input \S+pretrained: writing there could overwrite"),
    "convert into a non-empty folder": (
        "convert", lambda t, f: [str(_export(t, f["exports"])), str(_corpus(t))],
        r"output \S+corpus is not empty: pick a new folder, or pass --overwrite to replace it"),
    "convert into a file": (
        "convert", lambda t, f: [str(_export(t, f["exports"])), str(_file(t))], r"output \S+a_file is a file"),
    "convert damaged pytorch_model.bin": (
        "convert", lambda t, f: [str(_damaged(t, f["exports"], "pytorch_model.bin")), str(t / "out")],
        r"the weights in \S+damaged cannot be read \(UnpicklingError.*damaged, truncated or not a checkpoint"),
    "convert damaged model.safetensors": (
        "convert", lambda t, f: [str(_damaged(t, f["exports"], "model.safetensors")), str(t / "out")],
        r"the weights in \S+damaged cannot be read \(SafetensorError"),
    "prepare into its own corpus folder": (
        "prepare", lambda t, f: ["--input_files", str(_corpus(t)), "--output_dir", str(t / "corpus")],
        r"--output_dir \S+corpus is the input \S+corpus"),
    "prepare into a folder holding the corpus": (
        "prepare", lambda t, f: ["--input_files", str(_corpus(t) / "a.txt"), "--output_dir", str(t)],
        r"--output_dir \S+ holds the input \S+a.txt"),
    "prepare into a file": (
        "prepare", lambda t, f: ["--input_files", str(_corpus(t)), "--output_dir", str(_file(t))],
        r"--output_dir \S+a_file is a file, not a folder"),
    "prepare a corpus that is not UTF-8": (
        "prepare", lambda t, f: ["--input_files", str(_corpus(t, "caf\xe9 au lait\n".encode("latin-1"))),
                                 "--output_dir", str(t / "out"), "--num_workers", "1"],
        r"a.txt is not UTF-8 text: byte 0xe9 \(invalid continuation byte\) on line 1, column 4; re-encode it as UTF-8"),
    "prepare a parquet text column of numbers": (
        "prepare", lambda t, f: ["--input_files", str(_parquet_of_ints(t)), "--output_dir", str(t / "out"),
                                 "--num_workers", "1"],
        r"ints.parquet: the 'text' column holds int64, not text"),
    "pretrain into a file": (
        "pretrain", lambda t, f: f["pretrain"](f["shards"], str(_file(t))),
        r"--output_dir/--job_name \S+a_file/tiny: \S+a_file is a file, not a folder"),
    "pretrain on a file as --dataset_path": (
        "pretrain", lambda t, f: f["pretrain"](_file(t), str(t / "runs")),
        r"--dataset_path \S+a_file is a file, not a dataset folder"),
    "pretrain with --seed -1": (
        "pretrain", lambda t, f: f["pretrain"](f["shards"], str(t / "runs"), "--seed", "-1"),
        r"--seed must be in \[0, 2\*\*32 - 1\] \(got -1"),
    "pretrain with --adam_eps 0": (
        "pretrain", lambda t, f: f["pretrain"](f["shards"], str(t / "runs"), "--adam_eps", "0"),
        r"--adam_eps must be > 0 \(got 0.0\)"),
    "pretrain over an earlier run": (
        "pretrain", lambda t, f: (_earlier_run(t), f["pretrain"](f["shards"], str(t / "runs")))[1],
        r"holds an earlier run \(metrics.jsonl, args.json\).*--overwrite_output_dir to replace it"),
    "fine-tune with missing labels": (
        "glue", lambda t, f: ["--model_name_or_path", str(f["exports"]["post-ln"]), "--train_file",
                              str(_labels(t, ["1", "0", "", "0"])), "--do_train", "--output_dir", str(t / "ft")],
        r"labelled.csv: 1 row\(s\) have no label in column 'label' \(data rows 3, counted from 1"),
    "fine-tune into a file": (
        "glue", lambda t, f: ["--model_name_or_path", str(f["exports"]["post-ln"]), "--train_file",
                              str(_labels(t, ["1", "0"])), "--do_train", "--output_dir", str(_file(t))],
        r"--output_dir \S+a_file is a file"),
    "report into a folder": (
        "report", lambda t, f: [str(t), "--out", str(_corpus(t))], r"--out \S+corpus is a folder: give a file path"),
}


def _main(script: str):
    if script == "convert":
        from pretraining.checkpoints.convert import main
    elif script == "prepare":
        from prepare_dataset import main
    elif script == "pretrain":
        from run_pretraining import main
    elif script == "glue":
        from run_glue import main
    else:
        from pretraining.report.table import main
    return main


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_cleanly_and_destroys_nothing(case, tmp_path, tiny_exports, tiny_shards, tiny_model_flags,
                                                      capsys):
    script, build, message = CASES[case]
    work = tmp_path / "work"
    work.mkdir()

    def pretrain(dataset, output, *extra):
        return ["--dataset_path", str(dataset), "--output_dir", output, "--job_name", "tiny", *tiny_model_flags,
                "--max_steps", "1", *extra]

    argv = build(work, {"exports": tiny_exports, "shards": tiny_shards, "pretrain": pretrain})
    before = snapshot(work)
    folders_before = {p for p in work.rglob("*") if p.is_dir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        _main(script)(argv)
    assert stopped.value.code != 0
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert "Traceback" not in err, err[-3000:]
    errors = re.findall(r"^error: .*$", err, re.M)
    assert len(errors) == 1, err[-3000:]
    message_text = err[err.index(errors[0]):]  # an argument error lists its problems on the lines below it
    assert re.search(message, message_text), message_text
    assert snapshot(work) == before  # every earlier file byte-identical, none added
    assert {p for p in work.rglob("*") if p.is_dir()} == folders_before  # no folder left behind


def test_convert_overwrite_replaces_a_folder_whole(tmp_path, tiny_exports):
    from pretraining.checkpoints.convert import main

    out = tmp_path / "academic"
    out.mkdir()
    (out / "stale.txt").write_text("from before")
    main([str(tiny_exports["pre-ln"]), str(out), "--to", "academic-budget-bert", "--overwrite"])
    assert {"args.json", "config.json", "pytorch_model.bin"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert not (out / "stale.txt").exists() and not list(tmp_path.glob(".*academic"))  # swapped whole, no leftovers


def test_an_os_error_that_escapes_a_script_is_one_line_naming_the_path(capsys):
    from pretraining.errors import run_main

    @run_main
    def main(argv=None):
        raise PermissionError(13, "Permission denied", "/data/out/args.json")

    with pytest.raises(SystemExit) as stopped:
        main([])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert err.strip() == ("error: /data/out/args.json: Permission denied; check its permissions, or pick a folder "
                           "you can write")


def test_empty_documents_are_counted_and_binary_text_is_decoded(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prepare_dataset import main
    from pretraining.data.corpus import read_parquet

    pq.write_table(pa.table({"text": [b"caf\xc3\xa9 au lait", None, b""]}), tmp_path / "binary.parquet")
    assert [text for text, _ in read_parquet(tmp_path / "binary.parquet")] == ["café au lait", "", ""]
    texts = ["A sentence of the corpus, with several words in it."] * 40 + ["", None] * 10
    pq.write_table(pa.table({"text": texts}), tmp_path / "rows.parquet")
    main(["--input_files", str(tmp_path / "rows.parquet"), "--output_dir", str(tmp_path / "out"), "--num_workers",
          "1", "--num_train_shards", "1", "--num_test_shards", "1", "--max_seq_length", "32"])
    assert "notice: 20 empty document(s) (blank or null text) skipped" in capsys.readouterr().err
