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

# --- model section ------------------------------------------------------------

# --- training section ---------------------------------------------------------

# --- glue section -------------------------------------------------------------
