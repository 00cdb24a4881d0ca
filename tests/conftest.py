"""Shared fixtures. Everything runs on the CPU, offline, with tiny models.

Sections are owned by topic (data, model, training, glue); keep each one's fixtures
in its own section.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# No network at test time: the Hub is unreachable here, fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed on the CPU: its accelerator and a persistent cache for its JIT ops.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The packaged real BERT checkpoint (MiniLM-L6-H384) with the bert-base-uncased vocab."""
    from pretraining.resources import minilm_dir as find

    return find()


@pytest.fixture(scope="session")
def bert_tokenizer(minilm_dir):
    """The real bert-base-uncased WordPiece tokenizer (fast)."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(minilm_dir))


# --- data section -------------------------------------------------------------

TINY_SHARD_FLAGS = [
    "--max_documents", "300", "--max_seq_length", "64", "--max_predictions_per_seq", "10",
    "--num_train_shards", "4", "--dup_factor", "1", "--num_test_shards", "1", "--frac_test", "0.05",
    "--num_workers", "1", "--seed", "7",
]


def _prepare_tiny(folder: Path, *extra: str) -> Path:
    from prepare_dataset import main

    main(["--output_dir", str(folder), *TINY_SHARD_FLAGS, *extra])
    return folder


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Statically masked shards of 300 offline Wikipedia documents (4 train + 1 test, seq 64, 10 predictions)."""
    return _prepare_tiny(tmp_path_factory.mktemp("tiny_shards"))


@pytest.fixture(scope="session")
def tiny_shards_dynamic(tmp_path_factory) -> Path:
    """As ``tiny_shards`` but dynamically masked (no masked_lm keys; the collator masks)."""
    return _prepare_tiny(tmp_path_factory.mktemp("tiny_shards_dynamic"), "--masking", "dynamic")


# --- model section ------------------------------------------------------------

# --- training section ---------------------------------------------------------

# --- glue section -------------------------------------------------------------
