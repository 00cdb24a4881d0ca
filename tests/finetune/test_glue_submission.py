"""The GLUE submission zip (python -m pretraining.report --glue_submission): one model's eleven files with the
server's names, checked for completeness, one source model, labels and row counts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from pretraining.errors import UserError
from pretraining.finetune.glue import SERVER_FILES, SERVER_ROWS
from pretraining.finetune.glue.submission import build_submission

LABELS = {"MNLI-m": "neutral", "MNLI-mm": "contradiction", "AX": "entailment", "QNLI": "not_entailment",
          "RTE": "entailment", "STS-B": "3.250"}


def finetune_folders(root: Path, rows: int = 3, model: str = "/runs/adamw/pretrained", skip=()) -> list[Path]:
    """What run_glue.py --do_predict leaves, per task folder: the server-named file and all_results.json."""
    folders = []
    for tag, name in SERVER_FILES.items():
        if name in skip:
            continue
        folder = root / ("mnli" if tag.startswith("mnli") else tag)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.tsv").write_text("index\tprediction\n" +
                                            "".join(f"{i}\t{LABELS.get(name, '1')}\n" for i in range(rows)))
        (folder / "all_results.json").write_text(json.dumps({"task_name": tag, "pretrained_model": model}))
        folders.append(folder)
    return sorted(set(folders))


def test_a_complete_set_becomes_the_servers_zip(tmp_path, capsys):
    from pretraining.report.table import main

    finetune_folders(tmp_path / "ft")
    main(["--glue_submission", str(tmp_path / "ft"), "--out", str(tmp_path / "glue.zip"), "--allow_partial"])
    with zipfile.ZipFile(tmp_path / "glue.zip") as archive:
        names = archive.namelist()
        assert names == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
                         "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
        assert all(len(archive.read(n).decode().splitlines()) == 4 for n in names)
        assert archive.read("MNLI-mm.tsv").decode().splitlines()[1] == "0\tcontradiction"
    assert "GLUE submission: " in capsys.readouterr().out


def test_row_counts_must_be_glues_test_sets_unless_partial(tmp_path):
    with pytest.raises(UserError, match=r"CoLA.tsv has 3 predictions, GLUE's CoLA test set 1063"):
        build_submission(finetune_folders(tmp_path), tmp_path / "glue.zip")
    assert SERVER_ROWS["AX"] == 1104 and not (tmp_path / "glue.zip").exists()


def test_an_incomplete_a_mixed_or_a_malformed_set_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"incomplete GLUE submission: AX.tsv missing.*--task_name ax"):
        build_submission(finetune_folders(tmp_path / "a", skip=("AX",)), tmp_path / "a.zip", allow_partial=True)
    folders = finetune_folders(tmp_path / "b")
    (folders[0] / "all_results.json").write_text(json.dumps({"pretrained_model": "/runs/lamb/pretrained"}))
    with pytest.raises(UserError, match=r"mixed GLUE submission: .*/runs/lamb/pretrained: "):
        build_submission(folders, tmp_path / "b.zip", allow_partial=True)
    folders = finetune_folders(tmp_path / "c")
    (tmp_path / "c" / "rte" / "RTE.tsv").write_text("index\tprediction\n0\t1\n")
    with pytest.raises(UserError, match=r"RTE.tsv, line 2: '0\\t1' is not 'index<TAB>prediction' with a RTE label"):
        build_submission(folders, tmp_path / "c.zip", allow_partial=True)
    assert not list(tmp_path.glob("*.zip"))
