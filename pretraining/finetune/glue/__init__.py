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

from pretraining.finetune.glue.models import (
    check_model_fits, checkpoint_model_type, checkpoint_tokenizer, load_model_for_task,
)
from pretraining.finetune.glue.readers import (
    glue_dir_files, load_glue_dir, load_hub_task, load_local_files, load_rotten_tomatoes, read_table,
    rotten_tomatoes_splits, subset, tokenize_splits,
)
from pretraining.finetune.glue.tasks import (
    GLUE_HUB_DATASET, GLUE_TASKS, METRICS, SERVER_FILES, SERVER_ROWS, TASKS, TaskData, TaskSpec, compute_metrics,
    get_task, local_task, metrics_function, predictions_to_labels, write_predictions,
)

__all__ = [
    "GLUE_HUB_DATASET", "GLUE_TASKS", "METRICS", "SERVER_FILES", "SERVER_ROWS", "TASKS", "TaskData", "TaskSpec", "check_model_fits",
    "checkpoint_model_type", "checkpoint_tokenizer", "compute_metrics", "get_task", "glue_dir_files", "load_glue_dir",
    "load_hub_task",
    "load_local_files", "load_model_for_task", "load_rotten_tomatoes", "local_task", "metrics_function",
    "predictions_to_labels", "read_table", "rotten_tomatoes_splits", "subset", "tokenize_splits", "write_predictions",
]
