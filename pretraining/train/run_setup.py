"""What a pretraining run is built from, checked before the first step: :func:`build_run` makes the process
group, the data (tokenizer, masking, shards), the model (new or from a checkpoint, every encoder weight loaded),
optimizer, schedule, engine and loader, in a stated order; the training loop is :mod:`pretraining.train.training`."""

from __future__ import annotations

import functools
import logging
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pretraining.train.config import PretrainingConfig, check_arguments
from pretraining.errors import UserError
from pretraining.outputs import check_output_folder

logger = logging.getLogger(__name__)
#: model inputs the collator produces (next_sentence_label only for bert-mlm-nsp)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")
#: dynamic masking when neither a flag nor the shards' manifest says otherwise (BERT's)
MASKING_DEFAULTS = {"masked_lm_prob": 0.15, "max_predictions_per_seq": 20}


@dataclass
class BuiltRun:
    """Everything :func:`build_run` made for one run, ready for its first step."""

    config: PretrainingConfig
    dist: object  #: :class:`pretraining.train.engine.DistInfo`
    run_dir: Path
    resume_candidates: list[Path]  #: checkpoints to resume from, newest first (empty: a new run)
    manifest: dict | None
    tokenizer: object
    train_shards: list[Path]
    test_shards: list[Path]
    inputs: tuple[str, ...]  #: the batch keys the model takes
    collate: Callable
    read_shard: Callable
    unigram: torch.Tensor | None  #: log-probabilities of the unigram baseline (validation only)
    compatibility: dict  #: what a checkpoint must share with this run
    scheduler: object
    engine: object
    loader: object
    notices: list[str] = field(default_factory=list)

    @property
    def ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"


def build_run(config: PretrainingConfig) -> BuiltRun:
    """Set up a run, in this order (each step needs the ones before it):

    1. the process group (the world size decides gradient accumulation), then every argument rule at once;
    2. the run folder: refused if it holds checkpoints and no resume was asked for;
    3. the data: shards, manifest, tokenizer, masking settings, collator;
    4. the model (seeded with ``--seed``), checked against the tokenizer and every shard's metadata;
    5. the unigram baseline of validation; 6. optimizer, LR schedule and engine;
    7. the loader (dropout seeded per rank from here on).
    Resuming a checkpoint into these parts is the loop's first job (:class:`pretraining.train.training.Pretraining`).
    """
    from pretraining.checkpoints.checkpoint import resume_candidates
    from pretraining.data.collator import PretrainingCollator
    from pretraining.data.loader import ShardLoader
    from pretraining.data.shards import list_shards, read_manifest, read_shard
    from pretraining.train.engine import build_engine, setup_distributed
    from pretraining.train.evaluation import unigram_log_probs
    from pretraining.train.optimizers import build_optimizer
    from pretraining.train.schedules import build_scheduler

    run, data = config.run, config.data
    dist = setup_distributed(config.backend.deepspeed, run.local_rank, timeout_s=run.ddp_timeout)
    grad_accum, notices = check_arguments(config, dist.world_size)

    run_dir = check_output_folder(Path(run.output_dir) / run.job_name, flag="--output_dir/--job_name",
                                  inputs=[data.dataset_path])
    candidates = resume_candidates(run.load_training_checkpoint, run.load_checkpoint_id) \
        if run.load_training_checkpoint else []
    earlier = earlier_run(run_dir) if not candidates else []  # every rank decides alike: none is left waiting
    if earlier and not run.overwrite_output_dir:
        raise UserError(
            f"{run_dir} holds an earlier run ({', '.join(earlier)}): resume it with --load_training_checkpoint "
            f"{run_dir}" + ("" if "checkpoints" in earlier[0] else " (it has no checkpoint: it can only be replaced)") +
            ", pick another --job_name / --output_dir, or pass --overwrite_output_dir to replace it")

    train_shards = list_shards(data.dataset_path, "train")
    test_shards = list_shards(data.dataset_path, "test") if run.do_validation else []
    manifest = read_manifest(data.dataset_path)
    tokenizer = dataset_tokenizer(config.model.tokenizer_name, manifest, data.dataset_path)
    nsp = config.model.model_type == "bert-mlm-nsp"
    collate = PretrainingCollator(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                                  special_token_ids=tokenizer.all_special_ids,
                                  **masking_settings(data, manifest, notices))

    set_seeds(run.seed)
    model = build_model(config.model, data_vocab_size(manifest, tokenizer)).to(dist.device)
    vocab = model.config.vocab_size
    check_vocab(data.dataset_path, manifest, tokenizer, vocab)
    lengths = check_shards(train_shards + test_shards, model.config.max_position_embeddings)
    read = functools.partial(read_shard, vocab_size=vocab)
    unigram = torch.as_tensor(unigram_log_probs(data.dataset_path, train_shards, read, vocab, tokenizer, notices),
                              dtype=torch.float32, device=dist.device) if run.do_validation else None
    if config.model.model_name_or_path:
        notices.append(f"--model_name_or_path: the architecture comes from {config.model.model_name_or_path} "
                       f"({model.config.num_hidden_layers}x{model.config.hidden_size}); the architecture flags "
                       "are ignored")

    optimizer = build_optimizer(model, config.optimizer, use_fused=config.backend.fused_optimizer)
    scheduler = build_scheduler(optimizer, config.scheduler, total_steps=run.max_steps)
    engine = build_engine(model, optimizer, ds_args=config.backend, dist_info=dist, train_batch_size=run.train_batch_size,
                          micro_batch=run.train_micro_batch_size_per_gpu, grad_accum=grad_accum,
                          optimizer_type=config.optimizer.optimizer_type)

    torch.manual_seed(run.seed + dist.rank)  # dropout differs across ranks
    loader = ShardLoader(train_shards, read=read, collate=collate, micro_batch=engine.micro_batch,
                         grad_accum=engine.grad_accum, rank=dist.rank, world_size=dist.world_size,
                         loader_type=data.data_loader_type, seed=run.seed, max_steps_per_epoch=run.max_steps_per_epoch,
                         prefetch=data.async_worker, length=lengths.__getitem__)
    if dist.is_main:  # only now that every check passed: a refused start leaves nothing behind
        if earlier:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return BuiltRun(config=config, dist=dist, run_dir=run_dir, resume_candidates=candidates, manifest=manifest,
                    tokenizer=tokenizer, train_shards=train_shards, test_shards=test_shards,
                    inputs=MODEL_INPUTS + (("next_sentence_label",) if nsp else ()), collate=collate, read_shard=read,
                    unigram=unigram, compatibility=config.compatibility(model.config), scheduler=scheduler,
                    engine=engine, loader=loader, notices=notices)


def earlier_run(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir`` (its checkpoints first, then its logs and export); [] when none.
    (``run_dir`` passed :func:`pretraining.outputs.check_output_folder`: it is not a file.)"""
    from pretraining.checkpoints.checkpoint import list_checkpoints

    checkpoints = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
    found = [f"checkpoints {', '.join(checkpoints)}"] if checkpoints else []
    return found + [name for name in ("metrics.jsonl", "args.json", "pretrained") if (run_dir / name).exists()]


def masking_settings(data, manifest: dict | None, notices: list[str]) -> dict:
    """The collator's ``masked_lm_prob`` and ``max_predictions_per_seq``: the flag when given, else the shards'
    manifest (what prepare_dataset.py was told), else BERT's 0.15 and 20.

    Statically masked shards carry their masks: a flag that contradicts their manifest could not take effect and
    is refused. Dynamic shards are masked here, so a flag may differ from the manifest (a masking-rate study on
    one preparation), with a notice.
    """
    recorded = manifest or {}
    static = recorded.get("masking") == "static"
    settings = {}
    for key, default in MASKING_DEFAULTS.items():
        flag, stored = getattr(data, key), recorded.get(key)
        if flag is not None and stored is not None and flag != stored:
            if static:
                raise UserError(
                    f"--{key} {flag:g} contradicts the shards in {data.dataset_path}: they are statically masked "
                    f"with {key} {stored:g} (the masks are stored in them, a flag cannot change them); drop --{key}, "
                    "or prepare the shards again with that value (or with --masking dynamic)")
            notices.append(f"--{key} {flag:g} replaces the {stored:g} recorded in {data.dataset_path}/manifest.json "
                           "(dynamic masking: the collator masks with the flag's value)")
        settings[key] = flag if flag is not None else stored if stored is not None else default
    return settings


def dataset_tokenizer(name: str | None, manifest: dict | None, dataset_path: str | None = None):
    """``--tokenizer_name``, else the manifest's tokenizer (a relative one is the dataset folder's own, e.g. the
    vocabulary ``prepare_dataset.py --train_tokenizer`` trained), else the packaged bert-base-uncased."""
    from pretraining.data.tokenization import open_tokenizer
    from pretraining.resources import default_tokenizer_dir

    recorded = (manifest or {}).get("tokenizer")
    if recorded and dataset_path and not Path(recorded).is_absolute() and (Path(dataset_path) / recorded).is_dir():
        recorded = str(Path(dataset_path) / recorded)
    source = name or recorded or str(default_tokenizer_dir())
    return open_tokenizer(str(source), "pass --tokenizer_name with a local tokenizer folder (or a Hub name when online)")


def build_model(model_args, vocab_size: int):
    """A new BERT from the architecture flags (``--vocab_size``, else ``vocab_size``: the tokenizer's), or the
    weights of ``--model_name_or_path`` (its own architecture)."""
    from pretraining.model.modeling import BertForPreTraining, build_config

    if not model_args.model_name_or_path:
        return BertForPreTraining(build_config(model_args, vocab_size=model_args.vocab_size or vocab_size))
    from pretraining.checkpoints.layouts import check_loading  # also registers the other layouts' readers

    try:
        model, info = BertForPreTraining.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, output_loading_info=True,
            next_sentence_prediction=model_args.model_type == "bert-mlm-nsp",
            sparse_mask_prediction=model_args.sparse_mask_prediction)
    except OSError as exc:
        raise UserError(f"--model_name_or_path {model_args.model_name_or_path!r} could not be loaded "
                        f"({str(exc).splitlines()[0]}): give a folder written by run_pretraining.py (pretrained/) "
                        "or a BERT checkpoint") from None
    fresh = check_loading(info.get("missing_keys", []), info.get("unexpected_keys", []), model_args.model_name_or_path)
    if fresh:
        logger.warning("notice: --model_name_or_path %s has no %s: they start fresh (heads, not the encoder)",
                       model_args.model_name_or_path, ", ".join(fresh))
    return model


def data_vocab_size(manifest: dict | None, tokenizer) -> int:
    """The vocabulary the shards and tokenizer need: the larger of the manifest's and the tokenizer's."""
    return max(int((manifest or {}).get("vocab_size") or 0), len(tokenizer))


def check_vocab(dataset_path: str, manifest: dict | None, tokenizer, model_vocab: int) -> None:
    """Refuse shards or a tokenizer whose token ids do not fit the model's embedding."""
    data_vocab = int((manifest or {}).get("vocab_size") or len(tokenizer))
    if max(data_vocab, len(tokenizer)) > model_vocab:
        raise UserError(
            f"the shards in {dataset_path} use a tokenizer of {data_vocab} tokens (tokenizer {len(tokenizer)}), more "
            f"than the model's --vocab_size {model_vocab}: set --vocab_size {max(data_vocab, len(tokenizer))}, or "
            "prepare the shards with a tokenizer that fits")


def check_shards(paths: list[Path], max_positions: int) -> dict[Path, int]:
    """Check every shard's schema before training (metadata only: a bad shard fails the start, not epoch 500).

    All shards must share one sequence length, within the model's position embeddings. Returns each shard's
    number of samples (the loader's epoch lengths: the metadata is read once).
    """
    from pretraining.data.shards import check_shard

    infos = {path: check_shard(path) for path in paths}
    lengths = {path: info["seq_length"] for path, info in infos.items()}
    distinct = sorted(set(lengths.values()))
    if len(distinct) > 1:
        examples = ", ".join(f"{next(p.name for p, n in lengths.items() if n == length)}: {length}"
                             for length in distinct)
        raise UserError(f"the shards have different sequence lengths ({examples}): they come from different "
                        "preparations; keep one prepare_dataset.py output per --dataset_path")
    if distinct and distinct[0] > max_positions:
        raise UserError(f"the shards hold sequences of {distinct[0]} tokens, more than the model's "
                        f"--max_position_embeddings {max_positions}: set --max_position_embeddings {distinct[0]} or "
                        f"more, or prepare the shards with --max_seq_length {max_positions} or less")
    return {path: info["samples"] for path, info in infos.items()}


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
