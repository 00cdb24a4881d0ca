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
# DeepSpeed's accelerator follows the hardware (its CPU accelerator here, CUDA on a GPU machine; a value set
# before the tests is kept) and a persistent cache for its JIT ops.
from pretraining.train.engine import deepspeed_accelerator  # noqa: E402  (after ROOT is importable)
import torch  # noqa: E402

os.environ.setdefault("DS_ACCELERATOR", deepspeed_accelerator(torch.cuda.is_available()))
# One op cache per venv: DeepSpeed rebuilds its CPU comm op (~40 s) whenever the venv's path differs from the
# one it was built for, so checkouts sharing ~/.cache/torch_extensions would rebuild it in turn.
_EXTENSIONS = Path(sys.prefix) if sys.prefix != sys.base_prefix else Path.home() / ".cache"
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_EXTENSIONS / "torch_extensions"))


# The fast tier (`make test-fast`, under 90 s on 2 cores) holds only quick tests: a test without the slow
# mark whose call takes over FAST_TIER_LIMIT_S is named at the end of the run, so it gets marked (a report,
# never a failure: speed targets live in benchmarks/).
FAST_TIER_LIMIT_S = 5.0
_slow_unmarked: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.duration > FAST_TIER_LIMIT_S and "slow" not in report.keywords:
        _slow_unmarked.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter):
    if _slow_unmarked:
        terminalreporter.section("fast tier")
        terminalreporter.write_line(f"{len(_slow_unmarked)} test(s) without @pytest.mark.slow took over "
                                    f"{FAST_TIER_LIMIT_S} s; mark them slow or make them cheaper:")
        for duration, nodeid in sorted(_slow_unmarked, reverse=True):
            terminalreporter.write_line(f"  {duration:6.1f} s  {nodeid}")


_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE")
_DIST_ENV_AT_START = {key: os.environ.get(key) for key in _DIST_ENV}


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous():
    """A single-process DeepSpeed run in this process sets RANK/LOCAL_RANK/MASTER_PORT in
    os.environ (torch.distributed reads them there) and keeps its store listening on that
    port. Restore them (as they were when the session began: session fixtures may have run
    DeepSpeed before this fixture) after each test, so scripts that later tests start as
    subprocesses do not inherit a rendezvous that is already taken (accelerate would join it)."""
    yield
    for key, value in _DIST_ENV_AT_START.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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

# The venv's tools first on PATH, for this process and the launchers it starts: DeepSpeed builds its ops
# with the first `ninja` on PATH, and a system ninja of another version invalidates the cached build
# (a ~3-minute rebuild each time the two alternate).
_VENV_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _VENV_BIN:
    os.environ["PATH"] = f"{_VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"

#: A 2-layer, hidden-32 BERT on the tiny shards, constant LR: seconds per run on a CPU.
TINY_PRETRAIN_FLAGS = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--max_position_embeddings", "64", "--train_batch_size", "16", "--train_micro_batch_size_per_gpu", "8",
    "--lr", "2e-3", "--lr_schedule", "constant_step", "--num_warmup_steps", "0", "--print_steps", "1",
    "--no_wandb",
]


@pytest.fixture
def tiny_model_flags() -> list[str]:
    """The model, batch and schedule flags of a tiny pretraining run (no data or output flags)."""
    return list(TINY_PRETRAIN_FLAGS)


@pytest.fixture
def pretrain_flags(tiny_shards, tmp_path, tiny_model_flags):
    """Factory: run_pretraining.py flags for a tiny run on ``tiny_shards`` into ``tmp_path/runs``; extra flags last."""

    def make(*extra: str, job: str = "tiny", dataset=None) -> list[str]:
        return ["--dataset_path", str(dataset or tiny_shards), "--output_dir", str(tmp_path / "runs"),
                "--job_name", job, *tiny_model_flags, *extra]

    return make


@pytest.fixture
def single_thread():
    """One torch thread: tiny models run many times faster on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def deepspeed_ready():
    """DeepSpeed's first init on the CPU builds a small comm op (~1-2 min once, then cached in
    TORCH_EXTENSIONS_DIR): do it once per session, before the tests that time themselves."""
    from pretraining.train.engine import setup_distributed

    return setup_distributed(use_deepspeed=True)  # DeepSpeed's comm backend builds (or loads) the op here


@pytest.fixture
def fp16_on_cpu(monkeypatch, request):
    """fp16 allowed on this CPU machine, for the run's check and (tests parametrized with an ``engine`` naming
    deepspeed) for DeepSpeed's CPU accelerator, whose fp16 probe asks oneDNN; torch's CPU kernels compute fp16."""
    import pretraining.train.engine

    monkeypatch.setattr(pretraining.train.engine, "check_precision_supported", lambda precision: None)
    if "deepspeed" in request.node.callspec.params.get("engine", ""):
        request.getfixturevalue("deepspeed_ready")
        from deepspeed.accelerator import get_accelerator

        monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
        monkeypatch.setattr(type(get_accelerator()), "supported_dtypes",
                            lambda self: [torch.float, torch.half, torch.bfloat16])


# --- glue section -------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory, bert_tokenizer) -> dict:
    """Tiny pretrained exports of this project's BERT (2 layers, hidden 64, the real
    30,522-token vocab, masked LM only), keyed by encoder_ln_mode: "pre-ln", "post-ln"."""
    import torch

    from pretraining.checkpoints.export import export_pretrained
    from pretraining.model.modeling import BertConfig, BertForPreTraining

    exports = {}
    for mode in ("pre-ln", "post-ln"):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=128, max_position_embeddings=128,
                            encoder_ln_mode=mode, next_sentence_prediction=False, vocab_pad_multiple=8)
        exports[mode] = export_pretrained(BertForPreTraining(config), bert_tokenizer,
                                          tmp_path_factory.mktemp(f"export-{mode}") / "pretrained")
    return exports
