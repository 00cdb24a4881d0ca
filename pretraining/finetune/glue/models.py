"""Checkpoint folder -> sequence classifier and its tokenizer: the one place that does it (pickle-safe,
every encoder weight loaded or a clear error)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional, Sequence

from pretraining.errors import UserError


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
    import pretraining.checkpoints.layouts  # noqa: F401 - registers the readers of the other layouts with the model classes
    from pretraining.model.modeling import PRE_LN_MODEL_TYPE, BertConfig, BertForSequenceClassification

    return {name: (BertConfig, BertForSequenceClassification)
            for name in ("bert", PRE_LN_MODEL_TYPE, "roberta-prelayernorm", "xlm-roberta-xl")}


def load_model_for_task(model_name_or_path: str, num_labels: int, problem_type: str,
                        label_names: Optional[Sequence[str]] = None, cache_dir: Optional[str] = None):
    """A sequence classifier from a checkpoint folder (or Hub name), with a fresh head when it has none.

    BERT checkpoints (Hugging Face's, this project's exports in every layout, academic-budget-bert's
    checkpoint folders: :mod:`pretraining.checkpoints.layouts`) load into
    :class:`pretraining.model.modeling.BertForSequenceClassification`, and a UserError names any encoder
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
        from pretraining.checkpoints.checkpoint import unsafe_pickle_detail

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
        from pretraining.checkpoints.layouts import check_loading

        check_loading(missing, info.get("unexpected_keys", []), model_name_or_path)
    return model, missing


def checkpoint_tokenizer(name_or_path: str, cache_dir: Optional[str] = None):
    """The (fast) tokenizer saved with a checkpoint, or a Hub tokenizer name."""
    from pretraining.data.tokenization import has_tokenizer_files, open_tokenizer

    path = Path(name_or_path)
    _check_local_path(name_or_path, "tokenizer folder", "--tokenizer_name")
    if path.is_dir() and not has_tokenizer_files(path):
        raise UserError(f"{path} holds no tokenizer (tokenizer.json or vocab.txt); pass --tokenizer_name")
    return open_tokenizer(name_or_path, "pass --tokenizer_name", cache_dir=cache_dir)


def check_model_fits(config, tokenizer, max_seq_length: int, model_name: str) -> None:
    """UserError when the tokenizer's ids or ``max_seq_length`` do not fit the model's embeddings."""
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but {model_name} embeds only "
                        f"{config.vocab_size}: use the tokenizer the model was pretrained with (--tokenizer_name)")
    if max_seq_length > config.max_position_embeddings:
        raise UserError(f"--max_seq_length {max_seq_length} exceeds {model_name}'s "
                        f"max_position_embeddings ({config.max_position_embeddings}); lower it")
