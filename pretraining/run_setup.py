"""What a pretraining run is built from, checked before the first step: the tokenizer, the model (new or from
a checkpoint, every encoder weight loaded), and the shards against both; the seeds."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from pretraining.errors import UserError

logger = logging.getLogger(__name__)


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
    from pretraining.modeling import BertForPreTraining, build_config

    if not model_args.model_name_or_path:
        return BertForPreTraining(build_config(model_args, vocab_size=model_args.vocab_size or vocab_size))
    from pretraining.convert import check_loading

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


def check_shards(paths: list[Path], max_positions: int) -> None:
    """Check every shard's schema before training (metadata only: a bad shard fails the start, not epoch 500).

    All shards must share one sequence length, within the model's position embeddings.
    """
    from pretraining.data.shards import check_shard

    lengths = {path: check_shard(path)["seq_length"] for path in paths}
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


def set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
