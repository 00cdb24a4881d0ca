"""The task table (:data:`TASKS`): text columns, labels or regression, metrics, evaluation and test splits,
GLUE's submission format; metrics with scikit-learn and scipy only."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from pretraining.errors import UserError

# Fixed, independent of --seed: the same split and subsets for every run.
SPLIT_SEED = 42
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
        # the diagnostic set: an MNLI model (its labels) predicts it; test only (its labels are not public)
        _glue("ax", (("premise", "sentence1"), ("hypothesis", "sentence2")), ("entailment", "neutral", "contradiction"),
              ("accuracy",), evals=(), submit_label_names=True),
        TaskSpec("rotten_tomatoes", (("sentence",),), ("rotten", "fresh"), ("accuracy", "f1"), tests=(),
                 submit_label_names=True),
    )
}
GLUE_TASKS = tuple(name for name in TASKS if name != "rotten_tomatoes")
#: the GLUE server's file name (without .tsv) for each prediction tag, in the leaderboard's order
SERVER_FILES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI-m",
                "mnli-mm": "MNLI-mm", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "AX"}
#: rows of each GLUE test set (what the server expects in each file)
SERVER_ROWS = {"CoLA": 1063, "SST-2": 1821, "MRPC": 1725, "STS-B": 1379, "QQP": 390965, "MNLI-m": 9796,
               "MNLI-mm": 9847, "QNLI": 5463, "RTE": 3000, "WNLI": 146, "AX": 1104}


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


def write_predictions(path: Path, task: TaskSpec, predictions: np.ndarray, ids=None) -> None:
    """GLUE submission TSV: header ``index\\tprediction``, one row per test example.

    ``index`` is the test file's own id of the example where it has one (``ids``), else its row number.
    Regression writes the score (3 decimals); MNLI/QNLI/RTE and local tasks write label
    names, the other GLUE tasks the class id, as the GLUE server expects.
    """
    preds = predictions_to_labels(task, predictions)
    if ids is not None and len(ids) != len(preds):
        raise ValueError(f"{len(ids)} ids for {len(preds)} predictions")
    lines = ["index\tprediction"]
    for index, value in zip(ids if ids is not None else range(len(preds)), preds):
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
