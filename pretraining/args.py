"""Argument dataclasses, one per group, with academic-budget-bert's flag names.

Every field has help text; scripts parse them with :func:`pretraining.cli.parse_args`
and check them with each group's ``validate(check)`` (errors gathered, raised once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pretraining.cli import ArgumentChecker


@dataclass
class ModelArguments:
    """Model type and topology (academic-budget-bert's ModelArguments + ModelConfigArguments)."""

    model_type: str = field(
        default="bert-mlm",
        metadata={"help": "bert-mlm (masked LM only) or bert-mlm-nsp (plus next-sentence prediction)",
                  "choices": ["bert-mlm", "bert-mlm-nsp"]},
    )
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Start from this checkpoint (Hub name or local folder) instead of random weights"}
    )
    tokenizer_name: Optional[str] = field(
        default=None,
        metadata={"help": "Tokenizer (Hub name or local folder) exported with the model; default: the one recorded "
                          "in the shards' manifest.json, else the packaged bert-base-uncased vocab"},
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache folder for Hub downloads"})
    vocab_size: int = field(
        default=30522,
        metadata={"help": "Vocabulary size of the tokenizer (BERT=30522); the embedding is padded to a multiple of "
                          "--vocab_pad_multiple for speed and the padding rows are never predicted"},
    )
    vocab_pad_multiple: int = field(
        default=8, metadata={"help": "Pad the embedding/MLM vocabulary to a multiple of this (1 = no padding)"}
    )
    hidden_size: int = field(default=1024, metadata={"help": "Hidden size d of the encoder"})
    num_hidden_layers: int = field(default=24, metadata={"help": "Number of encoder layers L"})
    num_attention_heads: int = field(default=16, metadata={"help": "Attention heads per layer"})
    intermediate_size: int = field(default=4096, metadata={"help": "Feed-forward inner size f"})
    hidden_act: str = field(default="gelu", metadata={"help": "Feed-forward activation: gelu, relu, gelu_new, ..."})
    hidden_dropout_prob: float = field(default=0.1, metadata={"help": "Dropout on hidden states"})
    attention_probs_dropout_prob: float = field(default=0.1, metadata={"help": "Dropout on attention probabilities"})
    max_position_embeddings: int = field(default=512, metadata={"help": "Number of learned position embeddings"})
    type_vocab_size: int = field(default=2, metadata={"help": "Number of token types (segments)"})
    initializer_range: float = field(default=0.02, metadata={"help": "Std of the normal weight initialisation"})
    layer_norm_eps: float = field(default=1e-12, metadata={"help": "LayerNorm epsilon"})
    fused_linear_layer: bool = field(
        default=False,
        metadata={"help": "Accepted for academic-budget-bert compatibility (apex fused dense); torch fuses this "
                          "itself, so the flag has no effect (a notice is printed)"},
    )
    sparse_mask_prediction: bool = field(
        default=True, metadata={"help": "Compute vocabulary logits only at masked positions (faster, same loss)"}
    )
    encoder_ln_mode: str = field(
        default="pre-ln",
        metadata={"help": "LayerNorm position: pre-ln (stable at high LR) or post-ln (original BERT; loads in "
                          "transformers' BertForPreTraining)", "choices": ["pre-ln", "post-ln"]},
    )
    layer_norm_type: str = field(
        default="pytorch",
        metadata={"help": "pytorch (fused torch LayerNorm), rms_norm, or apex (alias of pytorch, with a notice)",
                  "choices": ["pytorch", "apex", "rms_norm"]},
    )
    layernorm_embedding: bool = field(
        default=True,
        metadata={"help": "LayerNorm on the summed embeddings. post-ln always has it; in pre-ln it is on by default "
                          "(as in academic-budget-bert) and --layernorm_embedding false removes it"},
    )

    def validate(self, check: ArgumentChecker) -> None:
        check.require(self.hidden_size > 0 and self.num_hidden_layers > 0, "--hidden_size and --num_hidden_layers must be > 0")
        check.require(
            self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads == 0,
            f"--hidden_size ({self.hidden_size}) must be divisible by --num_attention_heads ({self.num_attention_heads})",
        )
        check.require(self.vocab_size > 0, "--vocab_size must be > 0")
        check.require(self.vocab_pad_multiple >= 1, "--vocab_pad_multiple must be >= 1")
        check.require(0 <= self.hidden_dropout_prob < 1 and 0 <= self.attention_probs_dropout_prob < 1,
                      "dropout probabilities must be in [0, 1)")
        from transformers.activations import ACT2FN

        check.choice("--hidden_act", self.hidden_act, sorted(ACT2FN))


@dataclass
class OptimizerArguments:
    """Optimizer choice and hyper-parameters (academic-budget-bert's OptimizerArguments + --lr)."""

    optimizer_type: str = field(
        default="adamw", metadata={"help": "Optimizer: adam (L2 decay), adamw (decoupled decay), lamb, adafactor"}
    )
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (never on biases and LayerNorm weights)"})
    bias_correction: bool = field(default=False, metadata={"help": "LAMB: use Adam-style bias correction"})
    max_coeff: float = field(default=0.3, metadata={"help": "LAMB: upper clip of the trust ratio"})
    min_coeff: float = field(default=0.01, metadata={"help": "LAMB: lower clip of the trust ratio"})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam/AdamW/LAMB beta1 (Adafactor: 0 disables momentum)"})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam/AdamW/LAMB beta2"})
    adam_eps: float = field(
        default=1e-6,
        metadata={"help": "Adam/AdamW/LAMB epsilon (academic-budget-bert's LAMB ignored --adam_beta1/2/eps and used "
                          "FusedLamb's 0.9/0.999/1e-8; here LAMB uses the flags)"},
    )

    def __post_init__(self):
        self.optimizer_type = str(self.optimizer_type).lower()

    def validate(self, check: ArgumentChecker) -> None:
        from pretraining.optimizers import OPTIMIZERS

        check.choice("--optimizer_type", self.optimizer_type, sorted(OPTIMIZERS))
        check.require(self.lr > 0, f"--lr must be > 0 (got {self.lr})")
        check.require(self.weight_decay >= 0, f"--weight_decay must be >= 0 (got {self.weight_decay})")
        check.require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "--adam_beta1/--adam_beta2 must be in [0, 1)")
        check.require(0 < self.min_coeff <= self.max_coeff, "LAMB needs 0 < --min_coeff <= --max_coeff")


@dataclass
class SchedulerArguments:
    """Learning-rate schedule (academic-budget-bert's SchedulerArgs + the time budget)."""

    lr_schedule: str = field(
        default="time",
        metadata={"help": "time: LR follows elapsed training time / --total_training_time; step: follows "
                          "optimizer steps / --max_steps (required); constant_step: warmup over --num_warmup_steps, "
                          "then constant",
                  "choices": ["time", "step", "constant_step"]},
    )
    curve: str = field(default="linear", metadata={"help": "Decay after warmup: linear (to 0) or exp",
                                                  "choices": ["linear", "exp"]})
    warmup_proportion: float = field(default=0.06, metadata={"help": "Share of the budget (time or steps) spent warming up"})
    decay_rate: float = field(default=0.99, metadata={"help": "exp curve: LR multiplier per --decay_step"})
    decay_step: int = field(
        default=1000,
        metadata={"help": "exp curve: the LR is multiplied by --decay_rate every --decay_step steps (step "
                          "schedules) or seconds of training (time schedule; academic-budget-bert counted hours)"},
    )
    num_warmup_steps: int = field(
        default=1000,
        metadata={"help": "Warmup steps of constant_step, and of step when --warmup_proportion is 0"},
    )
    total_training_time: float = field(default=24.0, metadata={"help": "Training time budget in hours"})

    def validate(self, check: ArgumentChecker) -> None:
        check.require(0 <= self.warmup_proportion < 1, "--warmup_proportion must be in [0, 1)")
        check.require(self.total_training_time > 0, "--total_training_time must be > 0 hours")
        check.require(0 < self.decay_rate <= 1, "--decay_rate must be in (0, 1]")
        check.require(self.decay_step > 0, "--decay_step must be > 0")
        check.require(self.num_warmup_steps >= 0, "--num_warmup_steps must be >= 0")
