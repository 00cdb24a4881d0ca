"""The GLUE server's submission zip: one model's predictions of the nine tasks, MNLI matched and mismatched, and AX.

``python -m pretraining.report --glue_submission FINETUNE_DIR... --out glue.zip`` gathers the server-named files
that ``run_glue.py --do_predict`` writes (CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv,
MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv, AX.tsv) from the given fine-tuning folders (or folders holding them) and
writes the zip, refusing

* an incomplete set (a file missing, or given twice),
* a mixed set (predictions that come from different pretrained models, per each folder's all_results.json),
* a file whose rows are not GLUE's test-set size (unless ``--allow_partial``, e.g. for a dry run on subsets),
* a file that is not ``index<TAB>prediction`` rows with the task's labels (or numbers for STS-B).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Iterable

from pretraining.atomic import atomic_file
from pretraining.errors import UserError
from pretraining.finetune.glue.tasks import SERVER_FILES, SERVER_ROWS, TASKS

#: server file name -> the task whose labels it holds
SERVER_TASK = {name: TASKS["mnli" if tag.startswith("mnli") else tag] for tag, name in SERVER_FILES.items()}


def recorded_pretrained_model(folder: Path) -> str | None:
    """The root pretrained model a fine-tuning folder's all_results.json records (None when it records none)."""
    try:
        recorded = json.loads((Path(folder) / "all_results.json").read_text()).get("pretrained_model")
    except (OSError, ValueError, AttributeError):
        return None
    return str(recorded) if recorded else None


def gather(folders: Iterable[str | Path]) -> dict[str, Path]:
    """{server name: its file} from the folders (each a fine-tuning folder, or a folder of them)."""
    found: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder: give fine-tuning output folders (run_glue.py --output_dir)")
        for name in SERVER_FILES.values():
            for path in sorted({*folder.glob(f"{name}.tsv"), *folder.glob(f"*/{name}.tsv")}):
                if name in found and found[name] != path:
                    raise UserError(f"{name}.tsv is given twice ({found[name]} and {path}): name each task's folder "
                                    "once")
                found[name] = path
    return found


def _check_file(name: str, path: Path, allow_partial: bool) -> int:
    lines = path.read_text().splitlines()
    if not lines or lines[0] != "index\tprediction":
        raise UserError(f"{path} is not a GLUE prediction file (its first line must be 'index<TAB>prediction')")
    task = SERVER_TASK[name]
    valid = None if task.is_regression else (set(task.label_names) if task.submit_label_names else
                                             {str(i) for i in range(task.num_labels)})
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        bad = len(fields) != 2 or (valid is not None and fields[1] not in valid)
        if not bad and valid is None:
            try:
                float(fields[1])
            except ValueError:
                bad = True
        if bad:
            raise UserError(f"{path}, line {number}: {line!r} is not 'index<TAB>prediction' with a {name} label "
                            f"({', '.join(sorted(valid)) if valid else 'a number'})")
    rows = len(lines) - 1
    if rows != SERVER_ROWS[name] and not allow_partial:
        raise UserError(f"{path} has {rows} predictions, GLUE's {name} test set {SERVER_ROWS[name]}: predict the whole "
                        "test set (no --max_predict_samples), or pass --allow_partial for a zip the server will refuse")
    return rows


def build_submission(folders: Iterable[str | Path], out: str | Path, allow_partial: bool = False) -> dict[str, int]:
    """Write the zip (atomically); returns {file name: rows}."""
    found = gather(folders)
    missing = [name for name in SERVER_FILES.values() if name not in found]
    if missing:
        raise UserError(f"incomplete GLUE submission: {', '.join(f'{m}.tsv' for m in missing)} missing. Predict each "
                        "task with run_glue.py --do_predict (MNLI writes MNLI-m and MNLI-mm; AX is --task_name ax "
                        "with the MNLI model as --model_name_or_path) and give every folder")
    models = {name: recorded_pretrained_model(path.parent) or "?" for name, path in found.items()}
    if len(set(models.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, model in models.items():
            groups.setdefault(model, []).append(name)
        raise UserError("mixed GLUE submission: the predictions come from different pretrained models (" +
                        "; ".join(f"{model}: {', '.join(names)}" for model, names in groups.items()) +
                        "): give one model's fine-tuning folders")
    rows = {f"{name}.tsv": _check_file(name, found[name], allow_partial) for name in SERVER_FILES.values()}
    out = Path(out)
    with atomic_file(out) as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in SERVER_FILES.values():
                archive.write(found[name], f"{name}.tsv")
    return rows
