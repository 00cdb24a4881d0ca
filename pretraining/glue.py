"""GLUE tasks, local classification files and the offline ``rotten_tomatoes`` task.

One table (:data:`TASKS`) drives everything a task needs: its text columns, labels
(or regression), metrics, evaluation and test splits, and the GLUE submission format.
Data comes from the Hub (``datasets.load_dataset("nyu-mll/glue", task)``), from local
csv/tsv/json/jsonl files (GLUE's own TSVs included) or, offline, from the packaged
Rotten Tomatoes snippets. Every split is normalised to the columns ``sentence1``,
optional ``sentence2`` and ``label`` (class id, or float for regression). Metrics use
scikit-learn and scipy only. :func:`load_model_for_task` is the one place that turns
a checkpoint folder into a sequence classifier.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from pretraining.errors import UserError

# Fixed, independent of --seed: the same split and subsets for every run.
SPLIT_SEED = 42
ROTTEN_TOMATOES_VALIDATION_FRACTION = 0.1
GLUE_HUB_DATASET = "nyu-mll/glue"

# --- metrics --------------------------------------------------------------------


def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def _f1(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, zero_division=0.0))


def _matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def _pearson(preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(preds, labels)[0])


def _spearman(preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(preds, labels)[0])


def _mse(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((preds - labels) ** 2))


METRICS: Mapping[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearmanr": _spearman,
    "mse": _mse,
}

# --- the task table ---------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """Everything run_glue needs to know about one task.

    ``text_columns`` holds, per text field, the accepted column names: the Hub's name
    first, then GLUE's TSV header name. ``label_names`` is None for regression.
    ``evals`` maps a metric-key suffix ("" or "_mm") to a Hub split; ``tests`` maps a
    prediction-file tag to a Hub split.
    """

    name: str
    text_columns: tuple[tuple[str, ...], ...]
    label_names: Optional[tuple[str, ...]]
    metrics: tuple[str, ...]
    label_columns: tuple[str, ...] = ("label",)
    evals: tuple[tuple[str, str], ...] = (("", "validation"),)
    tests: tuple[tuple[str, str], ...] = ()
    headerless_columns: Optional[tuple[str, ...]] = None
    submit_label_names: bool = False

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return self.metrics[-1] if self.name in ("mrpc", "qqp") else self.metrics[0]

    @property
    def pair(self) -> bool:
        return len(self.text_columns) == 2


def _glue(name, text_columns, label_names, metrics, **kwargs) -> TaskSpec:
    kwargs.setdefault("tests", ((name, "test"),))
    return TaskSpec(name, text_columns, label_names, metrics, **kwargs)


_BINARY_ENTAILMENT = ("entailment", "not_entailment")
TASKS: Mapping[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        _glue("cola", (("sentence",),), ("unacceptable", "acceptable"), ("matthews_correlation",),
              headerless_columns=("source", "label", "original_label", "sentence")),
        _glue("sst2", (("sentence",),), ("negative", "positive"), ("accuracy",)),
        _glue("mrpc", (("sentence1", "#1 String"), ("sentence2", "#2 String")), ("not_equivalent", "equivalent"),
              ("accuracy", "f1"), label_columns=("label", "Quality")),
        _glue("stsb", (("sentence1",), ("sentence2",)), None, ("pearson", "spearmanr"),
              label_columns=("label", "score")),
        _glue("qqp", (("question1",), ("question2",)), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
              label_columns=("label", "is_duplicate")),
        _glue("mnli", (("premise", "sentence1"), ("hypothesis", "sentence2")), ("entailment", "neutral", "contradiction"),
              ("accuracy",), label_columns=("label", "gold_label"),
              evals=(("", "validation_matched"), ("_mm", "validation_mismatched")),
              tests=(("mnli", "test_matched"), ("mnli-mm", "test_mismatched")), submit_label_names=True),
        _glue("qnli", (("question",), ("sentence",)), _BINARY_ENTAILMENT, ("accuracy",), submit_label_names=True),
        _glue("rte", (("sentence1",), ("sentence2",)), _BINARY_ENTAILMENT, ("accuracy",), submit_label_names=True),
        _glue("wnli", (("sentence1",), ("sentence2",)), ("not_entailment", "entailment"), ("accuracy",)),
        TaskSpec("rotten_tomatoes", (("sentence",),), ("rotten", "fresh"), ("accuracy", "f1"), tests=(),
                 submit_label_names=True),
    )
}
GLUE_TASKS = tuple(name for name in TASKS if name != "rotten_tomatoes")


def get_task(name: str) -> TaskSpec:
    """The table entry for ``name`` (case-insensitive); UserError listing the valid names."""
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise UserError(f"unknown --task_name {name!r}; valid: {', '.join(TASKS)} "
                        "(or leave it out and pass --train_file/--validation_file for a local task)")
    return TASKS[key]


def local_task(text_columns: Sequence[str], label_names: Optional[Sequence[str]]) -> TaskSpec:
    """A task read from local files: accuracy (+F1 when binary), or Pearson/Spearman/MSE for regression."""
    if label_names is None:
        metrics = ("pearson", "spearmanr", "mse")
    else:
        metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy",)
    return TaskSpec("local", tuple((c,) for c in text_columns),
                    None if label_names is None else tuple(label_names), metrics, tests=(("local", "test"),),
                    submit_label_names=True)


def compute_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of ``task`` from raw logits ([N, num_labels], or [N] / [N, 1] for regression).

    Adds ``combined_score`` (their mean) when the task has several metrics.
    """
    preds = predictions_to_labels(task, predictions)
    labels = np.asarray(labels)
    result = {name: METRICS[name](preds, labels) for name in task.metrics}
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    return result


def predictions_to_labels(task: TaskSpec, predictions: np.ndarray) -> np.ndarray:
    """Logits -> class ids (argmax), or the squeezed score for regression."""
    predictions = predictions[0] if isinstance(predictions, tuple) else np.asarray(predictions)
    return np.squeeze(predictions, axis=-1) if task.is_regression else np.argmax(predictions, axis=-1)


def metrics_function(task: TaskSpec):
    """A Trainer ``compute_metrics`` callable for ``task``."""

    def compute(eval_prediction) -> dict[str, float]:
        return compute_metrics(task, eval_prediction.predictions, eval_prediction.label_ids)

    return compute


def write_predictions(path: Path, task: TaskSpec, predictions: np.ndarray) -> None:
    """GLUE submission TSV: header ``index\\tprediction``, one row per test example.

    Regression writes the score (3 decimals); MNLI/QNLI/RTE and local tasks write label
    names, the other GLUE tasks the class id, as the GLUE server expects.
    """
    preds = predictions_to_labels(task, predictions)
    lines = ["index\tprediction"]
    for index, value in enumerate(preds):
        if task.is_regression:
            lines.append(f"{index}\t{float(value):.3f}")
        else:
            lines.append(f"{index}\t{task.label_names[int(value)] if task.submit_label_names else int(value)}")
    path.write_text("\n".join(lines) + "\n")


# --- data ---------------------------------------------------------------------------


@dataclass
class TaskData:
    """A task's splits, normalised to ``sentence1`` [, ``sentence2``], ``label``.

    ``evals`` maps the metric-key suffix ("" or "_mm") to a labelled split; ``tests``
    maps the prediction-file tag to an unlabelled split.
    """

    task: TaskSpec
    train: Optional[object] = None
    evals: dict = field(default_factory=dict)
    tests: dict = field(default_factory=dict)

    def map_splits(self, fn) -> "TaskData":
        """A copy with ``fn`` applied to every split."""
        return dataclasses.replace(
            self,
            train=None if self.train is None else fn(self.train),
            evals={k: fn(v) for k, v in self.evals.items()},
            tests={k: fn(v) for k, v in self.tests.items()},
        )


_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")


def _file_format(path: Path) -> str:
    """``csv`` for ``x.csv`` and ``x.csv.gz``; the empty string when there is no suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    return suffixes[-1].lstrip(".") if suffixes else ""


def _read_csv(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False)


def _read_tsv(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    # GLUE's TSVs hold unbalanced quotes: read fields as plain text, as GLUE's own readers do; malformed
    # rows (a few in QQP) are skipped with a warning.
    options = dict(sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, on_bad_lines="warn", dtype=str)
    frame = pd.read_csv(path, **options)
    if headerless and not {"index", "sentence", "label"} & set(frame.columns):
        frame = pd.read_csv(path, header=None, names=list(headerless), **options)
    return frame


def _read_json(path: Path, headerless: Optional[Sequence[str]]):
    import pandas as pd

    if _file_format(path) == "jsonl":
        return pd.read_json(path, lines=True)
    try:  # a JSON array of records, else JSON lines (what datasets' json loader also accepts)
        return pd.read_json(path)
    except ValueError:
        return pd.read_json(path, lines=True)


READERS = {"csv": _read_csv, "tsv": _read_tsv, "json": _read_json, "jsonl": _read_json}


def read_table(path: str | Path, headerless: Optional[Sequence[str]] = None):
    """Read a csv/tsv/json/jsonl file (optionally .gz/.bz2/.xz compressed) into a DataFrame.

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
        if task.is_regression:
            values = _numeric(frame[label])
            if values.dtype == object:
                raise UserError(f"{source}: regression labels in column {label!r} must be numbers")
            columns["label"] = values.astype("float32").tolist()
        else:
            columns["label"] = _label_ids(frame[label], task.label_names, source)
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
    values = _numeric(frame[_pick_column(frame, (label_column,), "label", source)])
    if values.dtype.kind == "f":
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
        ds = ds.select_columns([*names, *(["label"] if labelled else [])]).rename_columns(names)
        return ds.cast_column("label", datasets.Value("float32")) if labelled and task.is_regression else ds

    return TaskData(task, convert("train", True),
                    {suffix: convert(split, True) for suffix, split in task.evals},
                    {tag: convert(split, False) for tag, split in task.tests})


def rotten_tomatoes_splits():
    """The packaged Rotten Tomatoes snippets as pandas frames (train, validation): fresh/rotten only
    (plot summaries dropped, duplicate texts dropped), split 90/10 with a fixed seed; columns
    ``category``, ``text``, ``movie_name``."""
    import pandas as pd

    from pretraining.resources import rotten_tomatoes_csv

    frame = pd.read_csv(rotten_tomatoes_csv(), usecols=["category", "text", "movie_name"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text").reset_index(drop=True)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(frame))
    n_eval = int(round(len(frame) * ROTTEN_TOMATOES_VALIDATION_FRACTION))
    return frame.iloc[order[n_eval:]], frame.iloc[order[:n_eval]]


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


def _check_local_path(name: str, what: str, flag: str) -> None:
    """UserError when ``name`` is a path (a Hub name is NAME or ORG/NAME) that does not exist."""
    path = Path(name)
    if (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1) and not path.expanduser().exists():
        raise UserError(f"{what} {name} does not exist; check {flag} (a folder, or a Hub name such as "
                        "bert-base-uncased)")


def checkpoint_model_type(model_name_or_path: str, cache_dir: Optional[str]) -> str:
    """The ``model_type`` of a checkpoint's config; UserError when the folder or its config is missing or unreadable."""
    from transformers import PretrainedConfig

    path = Path(model_name_or_path)
    _check_local_path(model_name_or_path, "model folder", "--model_name_or_path")
    if path.exists() and not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model folder (no config.json); pass a Hugging Face checkpoint folder or "
                        "the pretrained/ folder of a pretraining run")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(model_name_or_path, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model config of {model_name_or_path!r}: {exc}") from None
    return config_dict.get("model_type", "")


def _classifier_classes() -> dict:
    """model_type -> (config class, model class); BERT (pre-ln or post-ln) uses this project's model."""
    from pretraining.modeling import PRE_LN_MODEL_TYPE, BertConfig, BertForSequenceClassification

    return {name: (BertConfig, BertForSequenceClassification)
            for name in ("bert", PRE_LN_MODEL_TYPE, "roberta-prelayernorm", "xlm-roberta-xl")}


def load_model_for_task(model_name_or_path: str, num_labels: int, problem_type: str,
                        label_names: Optional[Sequence[str]] = None, cache_dir: Optional[str] = None):
    """A sequence classifier from a checkpoint folder (or Hub name), with a fresh head when it has none.

    BERT checkpoints (Hugging Face's, this project's exports in every layout, academic-budget-bert's
    checkpoint folders: :mod:`pretraining.convert`) load into
    :class:`pretraining.modeling.BertForSequenceClassification`, and a UserError names any encoder
    or embedding weight that did not load; other model types load into transformers'
    ``AutoModelForSequenceClassification``. ``problem_type`` is ``single_label_classification`` or
    ``regression``. Returns ``(model, missing_keys)``, ``missing_keys`` naming the freshly
    initialised weights (a task head, the pooler).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_type = checkpoint_model_type(model_name_or_path, cache_dir)
    config_class, model_class = _classifier_classes().get(model_type, (AutoConfig, AutoModelForSequenceClassification))
    kwargs = dict(num_labels=num_labels, problem_type=problem_type)
    if label_names is not None:
        kwargs.update(id2label=dict(enumerate(label_names)), label2id={name: i for i, name in enumerate(label_names)})
    try:  # never run a checkpoint's own Python code (auto_map), and never ask whether to
        config = config_class.from_pretrained(model_name_or_path, cache_dir=cache_dir, trust_remote_code=False,
                                              **kwargs)
        model, info = model_class.from_pretrained(model_name_or_path, config=config, cache_dir=cache_dir,
                                                  output_loading_info=True, trust_remote_code=False)
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met pickled code or objects
        from pretraining.checkpoint import unsafe_pickle_detail

        raise UserError(f"the model {model_name_or_path!r} was refused: its weights file holds pickled objects or "
                        f"code, not only tensors ({unsafe_pickle_detail(exc)}); use a safetensors checkpoint or one "
                        "from a source you trust") from None
    except (OSError, ValueError, RuntimeError) as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(f"the model {model_name_or_path!r} needs its own Python code to load (auto_map in its "
                            "config); run_glue.py never runs code shipped with a checkpoint: use a BERT checkpoint, "
                            "or one whose architecture transformers includes") from None
        raise UserError(f"cannot load the model {model_name_or_path!r}: {exc}") from None
    missing = sorted(info.get("missing_keys", []))
    if model_type in _classifier_classes():  # every encoder weight must load: only a new head may start fresh
        from pretraining.convert import check_loading

        check_loading(missing, sorted(info.get("unexpected_keys", [])), model_name_or_path)
    return model, missing


def load_tokenizer(name_or_path: str, cache_dir: Optional[str] = None):
    """The (fast) tokenizer saved with a checkpoint, or a Hub tokenizer name."""
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    _check_local_path(name_or_path, "tokenizer folder", "--tokenizer_name")
    if path.is_dir() and not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise UserError(f"{path} holds no tokenizer (tokenizer.json or vocab.txt); pass --tokenizer_name")
    try:
        return AutoTokenizer.from_pretrained(name_or_path, cache_dir=cache_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a tokenizer from {name_or_path!r}: {exc}; pass --tokenizer_name") from None


def check_model_fits(config, tokenizer, max_seq_length: int, model_name: str) -> None:
    """UserError when the tokenizer's ids or ``max_seq_length`` do not fit the model's embeddings."""
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but {model_name} embeds only "
                        f"{config.vocab_size}: use the tokenizer the model was pretrained with (--tokenizer_name)")
    if max_seq_length > config.max_position_embeddings:
        raise UserError(f"--max_seq_length {max_seq_length} exceeds {model_name}'s "
                        f"max_position_embeddings ({config.max_position_embeddings}); lower it")


def results_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """A markdown table, one row per task, from each run's ``all_results.json`` dict."""
    rows = ["| task | metrics | eval_loss | train_runtime (s) |", "|---|---|---|---|"]
    for name, result in results.items():
        metrics = ", ".join(f"{k[len('eval_'):]} {v:.4f}" for k, v in result.items()
                            if k.startswith("eval_") and isinstance(v, (int, float))
                            and k[len("eval_"):].split("_mm")[0] in METRICS)
        loss = result.get("eval_loss", math.nan)
        rows.append(f"| {name} | {metrics or '-'} | {loss:.4f} | {result.get('train_runtime', math.nan):.1f} |")
    return "\n".join(rows)
