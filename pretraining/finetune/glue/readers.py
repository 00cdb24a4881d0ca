"""Task data: local csv/tsv/json(l) files (GLUE's own TSVs included), the Hub, and the offline ``rotten_tomatoes``
snippets; every split normalised to ``sentence1``, optional ``sentence2`` and ``label``; subsets and tokenization."""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from pretraining.errors import UserError

from pretraining.finetune.glue.tasks import GLUE_HUB_DATASET, SPLIT_SEED, TASKS, TaskData, TaskSpec, local_task
from pretraining.resources import rotten_tomatoes_splits

logger = logging.getLogger(__name__)


_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")


def _file_format(path: Path) -> str:
    """``csv`` for ``x.csv`` and ``x.csv.gz``; the empty string when there is no suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1].lstrip(".") if suffixes else ""


#: a test file's id column, first found (GLUE's TSVs: index; the Hub's exports: idx)
ID_COLUMNS = ("index", "idx", "id")
_OPENERS = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def check_row_widths(path: Path, delimiter: str, quoting: int, width: Optional[int] = None) -> None:
    """Every record of a delimited file has the header's number of fields (``width`` for a headerless file): else a
    UserError naming the file, the line and what was found. pandas would pad a short record with empty fields (a
    record broken over two lines) and skip a long one with a warning, shifting every later prediction index."""
    import importlib

    opener = _OPENERS.get(path.suffix.lower())
    if path.suffix.lower() in _COMPRESSIONS and opener is None:
        return  # zip / zstd: read by pandas alone
    module = importlib.import_module(opener) if opener else None
    with (module.open if module else open)(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = None
        if width is None:
            header = next(reader, [])
            width = len(header)
        for row in reader:
            if row and len(row) != width:
                shown = " | ".join(field[:30] for field in row[:4]) + (" | ..." if len(row) > 4 else "")
                raise UserError(f"{path}, line {reader.line_num}: {len(row)} field(s) where "
                                f"{'the header has' if header else 'the task has'} {width} ({shown}): a record "
                                "broken over two lines, or a stray separator; fix or remove that line")


def _read_csv(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    check_row_widths(path, ",", csv.QUOTE_MINIMAL)
    return pd.read_csv(path, keep_default_na=False, encoding="utf-8-sig")


def _read_tsv(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    # GLUE's TSVs hold unbalanced quotes: read fields as plain text, as GLUE's own readers do; a malformed row
    # (QQP's train.tsv has had records broken over two lines) is an error naming its line, never skipped or padded
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, on_bad_lines="error", dtype=str,
                   encoding="utf-8-sig")
    frame = pd.read_csv(path, nrows=1, **options)  # the header decides between a header and GLUE's headerless files
    if headerless and not {"index", "sentence", "label"} & set(frame.columns):
        check_row_widths(path, "\t", csv.QUOTE_NONE, width=len(headerless))
        return pd.read_csv(path, header=None, names=list(headerless), **options)
    check_row_widths(path, "\t", csv.QUOTE_NONE)
    return pd.read_csv(path, **options)


def _read_json(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    if _file_format(path) == "jsonl":
        return pd.read_json(path, lines=True)
    try:  # a JSON array of records, else JSON lines (what datasets' json loader also accepts)
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


def _read_parquet(path: Path, headerless: Optional[Sequence[str]]):
    """Parquet, the Hub's own format (e.g. nyu-mll/glue's files: sentence columns, label, idx)."""
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"cannot read {path} as Parquet: {exc}") from None


#: .txt is read as TSV: MRPC's raw files (msr_paraphrase_train.txt / _test.txt) are TSVs with a BOM
READERS = {"csv": _read_csv, "tsv": _read_tsv, "txt": _read_tsv, "json": _read_json, "jsonl": _read_json,
           "parquet": _read_parquet}


def read_table(path: str | Path, headerless: Optional[Sequence[str]] = None):
    """Read a csv/tsv/txt (tab-separated)/json/jsonl/parquet file (text formats optionally .gz/.bz2/.xz compressed)
    into a DataFrame; a delimited file's rows must all fit its columns (:func:`check_row_widths`).

    ``headerless`` names the columns of a TSV written without a header (GLUE's CoLA).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file {path} does not exist; check --train_file/--validation_file/--test_file")
    fmt = _file_format(path)
    if fmt not in READERS:
        raise UserError(f"cannot read {path}: unsupported format {fmt!r}; use one of: {', '.join(READERS)}")
    try:
        frame = READERS[fmt](path, headerless)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot parse {path} as {fmt}: {exc}") from None
    if len(frame) == 0:
        raise UserError(f"{path} holds no examples")
    return frame


def _pick_column(frame, candidates: Sequence[str], role: str, source: str) -> str:
    for name in candidates:
        if name in frame.columns:
            return name
    raise UserError(f"{source} has no {role} column {' or '.join(map(repr, candidates))}; its columns are "
                    f"{', '.join(map(str, frame.columns))}: name the right ones with --text_columns/--label_column")


def _numeric(values):
    """Numbers stay numbers; strings that all parse as numbers (TSV fields) become numbers."""
    import pandas as pd

    if values.dtype != object:
        return values
    converted = pd.to_numeric(values, errors="coerce")
    return values if converted.isna().any() else converted


def _label_text(value) -> str:
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _check_no_missing_labels(values, column: str, source: str) -> None:
    """UserError naming the data rows (1-based, after any header) whose label is empty or missing."""
    missing = [row for row, value in enumerate(values.tolist(), 1)
               if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip()]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(f"{source}: {len(missing)} row(s) have no label in column {column!r} (data rows {shown}, "
                        "counted from 1 after the header): fill them in or drop those rows")


def _label_ids(values, label_names: Sequence[str], source: str) -> list[int]:
    """Map label values to ids in ``label_names``: by name, else (when no name is a number) as an
    integer id. UserError naming the values that match neither."""
    index = {name: i for i, name in enumerate(label_names)}
    allow_ids = not any(_is_int(name) for name in label_names)
    ids, bad = [], set()
    for value in _numeric(values).tolist():
        text = _label_text(value)
        key = index.get(text)
        if key is None and allow_ids and _is_int(text) and 0 <= int(text) < len(label_names):
            key = int(text)
        if key is None:
            bad.add(text)
        ids.append(key)
    if bad:
        shown = ", ".join(map(repr, sorted(bad)[:5]))
        raise UserError(f"{source}: labels {shown} are not in the task's labels {list(label_names)} "
                        f"(or ids 0..{len(label_names) - 1}); check --label_column and --task_name")
    return ids


def _normalise(frame, task: TaskSpec, label_column: Optional[str], source: str, labelled: bool):
    """Select and rename a split's columns to sentence1 [, sentence2], label."""
    import datasets

    columns = {}
    for i, candidates in enumerate(task.text_columns):
        columns[f"sentence{i + 1}"] = frame[_pick_column(frame, candidates, "text", source)].astype(str).tolist()
    if labelled:
        label = _pick_column(frame, (label_column,) if label_column else task.label_columns, "label", source)
        _check_no_missing_labels(frame[label], label, source)
        if task.is_regression:
            values = _numeric(frame[label])
            if values.dtype == object:
                raise UserError(f"{source}: regression labels in column {label!r} must be numbers")
            columns["label"] = values.astype("float32").tolist()
        else:
            columns["label"] = _label_ids(frame[label], task.label_names, source)
    else:  # a test file's own ids (GLUE's index column): the predictions keep them
        own = next((name for name in ID_COLUMNS if name in frame.columns), None)
        if own is not None:
            columns["idx"] = frame[own].astype(str).tolist()
    return datasets.Dataset.from_dict(columns)


def _local_task_from(frame, text_columns: Optional[Sequence[str]], label_column: str, source: str) -> TaskSpec:
    """Infer a local task's text columns and labels (or regression) from its training file."""
    if text_columns:
        for name in text_columns:
            _pick_column(frame, (name,), "text", source)
    else:
        text_columns = next((names for names in (("sentence1", "sentence2"), ("sentence",), ("text",))
                             if set(names) <= set(frame.columns)), None)
        if text_columns is None:
            raise UserError(f"{source}: cannot tell which columns hold the text (columns: "
                            f"{', '.join(map(str, frame.columns))}); pass --text_columns NAME[,NAME2]")
    column = _pick_column(frame, (label_column,), "label", source)
    _check_no_missing_labels(frame[column], column, source)
    values = _numeric(frame[column])
    if values.dtype.kind == "f":
        example = next((v for v in values.tolist() if not float(v).is_integer()), values.iloc[0])
        logger.warning("notice: %s: the labels in column %r are decimal numbers (e.g. %s): the task is treated as "
                       "regression (MSE loss; Pearson and Spearman correlation); for classes, use integer or text "
                       "labels", source, column, example)
        return local_task(text_columns, None)
    names = sorted({_label_text(v) for v in values.tolist()}, key=lambda v: (not _is_int(v), _sort_key(v)))
    return local_task(text_columns, names)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _sort_key(text: str):
    return int(text) if _is_int(text) else text


def load_local_files(files: Mapping[str, Optional[str]], task: Optional[TaskSpec] = None,
                     text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None) -> TaskData:
    """Read local ``train``/``validation``/``test`` files (any may be None) into a TaskData.

    With ``task`` (a GLUE task), its columns and labels apply and GLUE's own TSV headers
    are understood; without it a local task is inferred from the training file
    (``text_columns``, default sentence1+sentence2, sentence or text; ``label_column``,
    default ``label``; float labels mean regression; class names sorted).
    """
    headerless = task.headerless_columns if task else None
    frames = {split: read_table(path, headerless) for split, path in files.items() if path}
    if task is None:
        source = files.get("train") or files.get("validation")
        if source is None:
            raise UserError("a local task needs --train_file or --validation_file (to learn its columns and labels)")
        reference = frames["train" if files.get("train") else "validation"]
        task = _local_task_from(reference, text_columns, label_column or "label", source)
    elif text_columns:
        task = dataclasses.replace(task, text_columns=tuple((c,) for c in text_columns))
    splits = {split: _normalise(frame, task, label_column, str(files[split]), labelled=split != "test")
              for split, frame in frames.items()}
    tag = task.tests[0][0] if task.tests else task.name
    return TaskData(task, splits.get("train"),
                    {"": splits["validation"]} if "validation" in splits else {},
                    {tag: splits["test"]} if "test" in splits else {})


#: the standard glue_data/ layout (GLUE's download script): each task's folder, and its dev/test files per
#: metric suffix / prediction tag (MNLI: matched and mismatched)
GLUE_FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
                "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "diagnostic"}
GLUE_DEV_FILES = {"mnli": {"": "dev_matched.tsv", "_mm": "dev_mismatched.tsv"}, "ax": {}}
GLUE_TEST_FILES = {"mnli": {"mnli": "test_matched.tsv", "mnli-mm": "test_mismatched.tsv"},
                   "ax": {"ax": "diagnostic.tsv"}}


def glue_dir_files(glue_dir: str | Path, task: TaskSpec) -> tuple[Optional[Path], dict, dict]:
    """``task``'s files in a glue_data/ folder: train, {metric suffix: dev file}, {prediction tag: test file}
    (each that exists); a UserError naming the expected folder when the task has none."""
    if task.name not in GLUE_FOLDERS:
        raise UserError(f"--glue_dir holds the GLUE tasks ({', '.join(GLUE_FOLDERS)}), not {task.name!r}")
    folder = Path(glue_dir).expanduser() / GLUE_FOLDERS[task.name]
    if not folder.is_dir():
        raise UserError(f"--glue_dir {glue_dir} has no {GLUE_FOLDERS[task.name]}/ folder for {task.name}: give the "
                        "glue_data/ folder of GLUE's download script (CoLA/, SST-2/, MRPC/, ..., MNLI/)")
    dev = GLUE_DEV_FILES.get(task.name, {"": "dev.tsv"})
    test = GLUE_TEST_FILES.get(task.name, {tag: "test.tsv" for tag, _ in task.tests})
    train = folder / "train.tsv"
    return (train if train.is_file() else None, {k: folder / v for k, v in dev.items() if (folder / v).is_file()},
            {k: folder / v for k, v in test.items() if (folder / v).is_file()})


def load_glue_dir(glue_dir: str | Path, task: TaskSpec) -> TaskData:
    """A GLUE task from a glue_data/ folder: every dev split evaluated (MNLI: matched and mismatched, as eval_* and
    eval_*_mm) and every test split predicted (MNLI: mnli and mnli-mm)."""
    train, evals, tests = glue_dir_files(glue_dir, task)

    def read(path: Path, labelled: bool):
        return _normalise(read_table(path, task.headerless_columns), task, None, str(path), labelled=labelled)

    return TaskData(task, read(train, True) if train else None, {k: read(v, True) for k, v in evals.items()},
                    {k: read(v, False) for k, v in tests.items()})


def load_hub_task(task: TaskSpec, dataset_name: str = GLUE_HUB_DATASET, cache_dir: Optional[str] = None) -> TaskData:
    """Load a GLUE task from the Hub (``datasets.load_dataset(dataset_name, task)``)."""
    import datasets

    try:
        raw = datasets.load_dataset(dataset_name, task.name, cache_dir=cache_dir)
    except (ConnectionError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot load GLUE task {task.name!r} from the Hub ({dataset_name}): {exc}. Offline, pass GLUE's files "
            "with --train_file/--validation_file/--test_file, or use --task_name rotten_tomatoes") from None

    def convert(split: str, labelled: bool):
        ds = raw[split]
        names = {cands[0]: f"sentence{i + 1}" for i, cands in enumerate(task.text_columns)}
        keep = ["label"] if labelled else [c for c in ("idx",) if c in ds.column_names]
        ds = ds.select_columns([*names, *keep]).rename_columns(names)
        return ds.cast_column("label", datasets.Value("float32")) if labelled and task.is_regression else ds

    return TaskData(task, convert("train", True) if "train" in raw else None,  # ax: a test split only
                    {suffix: convert(split, True) for suffix, split in task.evals},
                    {tag: convert(split, False) for tag, split in task.tests})


def load_rotten_tomatoes() -> TaskData:
    """The packaged Rotten Tomatoes snippets: fresh=1 / rotten=0, train/validation from
    :func:`rotten_tomatoes_splits`."""
    task = TASKS["rotten_tomatoes"]
    train, validation = (frame[["category", "text"]].rename(columns={"text": "sentence", "category": "label"})
                         for frame in rotten_tomatoes_splits())
    return TaskData(task, _normalise(train, task, "label", "rotten_tomatoes", labelled=True),
                    {"": _normalise(validation, task, "label", "rotten_tomatoes", labelled=True)}, {})


def subset(dataset, max_samples: Optional[int], shuffle: bool = True):
    """At most ``max_samples`` examples: a fixed-seed random sample (sorted back into file
    order), or the first ones when ``shuffle`` is False. Deterministic whatever --seed."""
    if not max_samples or max_samples >= len(dataset):
        return dataset
    if not shuffle:
        return dataset.select(range(max_samples))
    picked = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(dataset))[:max_samples])
    return dataset.select(picked.tolist())


def tokenize_splits(data: TaskData, tokenizer, max_seq_length: int, pad_to_max_length: bool = False) -> TaskData:
    """Tokenise every split (pairs as ``[CLS] a [SEP] b [SEP]``), truncating to ``max_seq_length``."""
    padding = "max_length" if pad_to_max_length else False

    def encode(batch):
        texts = (batch["sentence1"],) + ((batch["sentence2"],) if "sentence2" in batch else ())
        return tokenizer(*texts, truncation=True, max_length=max_seq_length, padding=padding)

    def apply(ds):
        drop = [c for c in ("sentence1", "sentence2") if c in ds.column_names]
        return ds.map(encode, batched=True, remove_columns=drop, desc="tokenizing")

    return data.map_splits(apply)


# --- models ------------------------------------------------------------------------
