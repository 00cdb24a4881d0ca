"""prepare_dataset.py's flags (:class:`PrepareArguments`, academic-budget-bert's names where it has them) and
its defaults (:func:`apply_defaults`: the corpus and the folder when none are given); the pipeline is
:mod:`pretraining.data.prepare`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pretraining.cli import ArgumentChecker
from pretraining.data import corpus
from pretraining.data.vocab import MIN_VOCAB_SIZE

MASKING = ("static", "dynamic")


def parse_part(text: str) -> Optional[tuple[int, int]]:
    """``"K/M"`` -> (K, M) when 0 <= K < M and M >= 2; None otherwise."""
    try:
        k, m = (int(x) for x in str(text).split("/"))
    except ValueError:
        return None
    return (k, m) if 0 <= k < m and m >= 2 else None


@dataclass
class PrepareArguments:
    """Flags of prepare_dataset.py."""

    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder for the shards and manifest.json (created if missing); default: "
                                        "data/<corpus> (printed)"})
    dataset: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Named corpus, or several read one after the other: wikipedia (the Hub's English "
                          "Wikipedia via datasets.load_dataset), wikipedia-offline (10,033 lead sections shipped in "
                          "a package; the default when no --input_files are given), rotten_tomatoes-unlabelled "
                          "(the offline task's training-split reviews without labels, and plot summaries)",
                  "nargs": "+"},
    )
    dataset_config: Optional[str] = field(
        default=None, metadata={"help": "Config of --dataset wikipedia, e.g. 20231101.en (default) or 20231101.simple"}
    )
    input_files: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Local corpus files (after --dataset's documents, if given): .txt (one document per line, or documents "
                          "separated by blank lines), .jsonl/.json (field text), .parquet (column text), MediaWiki "
                          "dumps .xml/.xml.bz2; text formats may be .gz/.bz2/.xz; a folder means its files",
                  "nargs": "+"},
    )
    tokenizer_name: Optional[str] = field(
        default=None,
        metadata={"help": "Fast WordPiece tokenizer: Hub name (e.g. bert-large-uncased) or local folder; default: "
                          "the packaged bert-base-uncased vocab"},
    )
    do_lower_case: Optional[bool] = field(
        default=None,
        metadata={"help": "Lower-case the text (--do_lower_case, or --do_lower_case false for a cased vocab); "
                          "default: what the tokenizer itself does", "nargs": "?", "const": True},
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache folder for Hub downloads"})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per sample, [CLS] and [SEP] included"})
    short_seq_prob: float = field(
        default=0.1, metadata={"help": "Probability that a sample gets a shorter random target length"}
    )
    masking: str = field(
        default="static",
        metadata={"help": "static: masks written into the shards (academic-budget-bert's format); dynamic: no "
                          "masked_lm keys, the collator masks every batch anew", "choices": list(MASKING)},
    )
    masked_lm_prob: float = field(default=0.15, metadata={"help": "Share of (non-special) tokens to predict"})
    max_predictions_per_seq: int = field(default=20, metadata={"help": "Cap on predicted tokens per sample"})
    num_train_shards: int = field(default=256, metadata={"help": "Train shards before duplication"})
    dup_factor: int = field(
        default=10,
        metadata={"help": "Copies of each train shard with different packing and masks (256 x 10 = 2560 files)"},
    )
    num_test_shards: int = field(default=128, metadata={"help": "Test shards (not duplicated)"})
    frac_test: float = field(default=0.1, metadata={"help": "Share of documents held out for the test shards"})
    max_documents: Optional[int] = field(default=None, metadata={"help": "Use only the first N documents (quick runs)"})
    num_workers: Optional[int] = field(
        default=None, metadata={"help": "Worker processes (default: the CPU cores available); the output does not depend on it"}
    )
    nsp: bool = field(
        default=False, metadata={"help": "Make sentence pairs with next_sentence_labels (for --model_type bert-mlm-nsp)"}
    )
    train_tokenizer: Optional[int] = field(
        default=None,
        metadata={"help": "Train a WordPiece vocabulary of this many tokens on the corpus's train documents (e.g. "
                          "8192) instead of using --tokenizer_name; saved in OUTPUT_DIR/tokenizer and used by "
                          "run_pretraining.py and, through the export, run_glue.py"},
    )
    train_tokenizer_max_documents: Optional[int] = field(
        default=None, metadata={"help": "Train the vocabulary on at most this many train documents (default: all)"}
    )
    max_unk_fraction: float = field(
        default=0.05,
        metadata={"help": "Refuse a tokenizer that maps more than this share of the corpus to [UNK] (its "
                          "vocabulary does not fit the text); bert-base-uncased on English Wikipedia: ~0.1%"},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the test split phase, packing, shuffling and masking"})
    overwrite: bool = field(
        default=False, metadata={"help": "Delete shards and manifest already in --output_dir, even of other settings"}
    )
    part: Optional[str] = field(
        default=None,
        metadata={"help": "K/M: prepare only part K (0-based) of M, to split the work over M machines: the train "
                          "and test shards whose index modulo M is K, tokenizing only their documents (the corpus is "
                          "still read in full); then join the M folders with --merge. The merged folder is "
                          "byte-identical to one run without --part"},
    )
    merge: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Join the folders of every --part K/M run (any order) into --output_dir: the shards are "
                          "linked or copied and checked against their sha256, one manifest.json and token count "
                          "file are written; every other flag is ignored", "nargs": "+"},
    )

    def __post_init__(self):
        if isinstance(self.dataset, str):  # one name, e.g. from a JSON file of arguments
            self.dataset = [self.dataset]

    def validate(self, check: ArgumentChecker) -> None:
        """Gather every argument error into ``check``."""
        for name in self.dataset or []:
            check.choice("--dataset", name, corpus.DATASETS)
        check.require(len(set(self.dataset or [])) == len(self.dataset or []), "--dataset lists a corpus twice")
        check.choice("--masking", self.masking, MASKING)
        check.require(self.max_seq_length >= 8, f"--max_seq_length must be >= 8 (got {self.max_seq_length})")
        check.require(0 <= self.short_seq_prob <= 1, f"--short_seq_prob must be in [0, 1] (got {self.short_seq_prob})")
        check.require(0 < self.masked_lm_prob < 1, f"--masked_lm_prob must be in (0, 1) (got {self.masked_lm_prob})")
        check.require(1 <= self.max_predictions_per_seq <= max(1, self.max_seq_length - 2),
                      f"--max_predictions_per_seq must be in [1, max_seq_length - 2] (got {self.max_predictions_per_seq})")
        check.require(self.num_train_shards >= 1, f"--num_train_shards must be >= 1 (got {self.num_train_shards})")
        check.require(self.dup_factor >= 1, f"--dup_factor must be >= 1 (got {self.dup_factor})")
        check.require(self.num_test_shards >= 0, f"--num_test_shards must be >= 0 (got {self.num_test_shards})")
        check.require(0 <= self.frac_test < 1, f"--frac_test must be in [0, 1) (got {self.frac_test})")
        check.require((self.frac_test > 0) == (self.num_test_shards > 0),
                      "--frac_test and --num_test_shards must both be 0 (no test set) or both be > 0")
        check.require(self.max_documents is None or self.max_documents >= 1, "--max_documents must be >= 1")
        check.require(self.num_workers is None or self.num_workers >= 1, "--num_workers must be >= 1")
        check.require(self.train_tokenizer is None or self.tokenizer_name is None,
                      "give either --tokenizer_name or --train_tokenizer, not both")
        check.require(self.train_tokenizer is None or self.train_tokenizer >= MIN_VOCAB_SIZE,
                      f"--train_tokenizer must be at least {MIN_VOCAB_SIZE} tokens (got {self.train_tokenizer})")
        check.require(self.train_tokenizer_max_documents is None or self.train_tokenizer_max_documents >= 1,
                      "--train_tokenizer_max_documents must be >= 1")
        check.require(0 <= self.max_unk_fraction <= 1, f"--max_unk_fraction must be in [0, 1] (got {self.max_unk_fraction})")
        if self.part is not None:
            part = parse_part(self.part)
            check.require(part is not None, f"--part must be K/M with 0 <= K < M, M >= 2 (got {self.part!r})")
            check.require(part is None or part[1] <= self.num_train_shards,
                          f"--part {self.part}: {part and part[1]} parts need at least that many train shards "
                          f"(--num_train_shards {self.num_train_shards})")
            check.require(self.train_tokenizer is None,
                          "--part with --train_tokenizer would train a vocabulary per part: train it once (a "
                          "prepare_dataset.py --train_tokenizer N run writes DIR/tokenizer before it starts "
                          "tokenizing, and may be stopped then), then give every part --tokenizer_name DIR/tokenizer")
            check.require(not self.merge, "give either --part (one part's run) or --merge (joining the parts), not both")

    def part_of(self) -> Optional[tuple[int, int]]:
        """(K, M) of --part, or None for a whole run."""
        return parse_part(self.part) if self.part is not None else None

    @property
    def workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def log(message: str) -> None:
    print(f"[prepare_dataset] {message}", file=sys.stderr, flush=True)


#: the seed's corpus when no --dataset/--input_files are given and the Hub can be reached
ONLINE_DEFAULT = ("wikipedia", "20231101.simple")
HUB_HOST = ("huggingface.co", 443)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when offline mode is asked for (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or the Hub does not answer."""
    import socket

    if any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
           for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=timeout_s).close()
        return True
    except OSError:
        return False


def apply_defaults(args: PrepareArguments, seed_default: bool = False) -> PrepareArguments:
    """A default corpus and a default folder, both printed.

    No --dataset and no --input_files: the packaged Wikipedia lead sections; with ``seed_default``
    (the seed's ``python prepare_dataset.py`` with no arguments at all) the seed's Simple English
    Wikipedia from the Hub instead, when it can be reached. No --output_dir: ``data/<corpus>``.
    """
    if not args.dataset and not args.input_files:
        online = seed_default and _hub_reachable()
        args.dataset = [ONLINE_DEFAULT[0] if online else "wikipedia-offline"]
        if online and args.dataset_config is None:
            args.dataset_config = ONLINE_DEFAULT[1]
        log(f"no --dataset or --input_files: preparing {args.dataset[0]}"
             + (f" ({args.dataset_config}, the seed's corpus)" if online else
                (" (the Hub is not reachable: " if seed_default else " (") + "the packaged Wikipedia lead sections)"))
    if args.output_dir is None:
        name = "-".join(args.dataset or []) or "input_files"
        args.output_dir = str(Path("data") / (f"{name}-{args.dataset_config}" if args.dataset_config else name))
        log(f"no --output_dir: writing to {args.output_dir}")
    return args
