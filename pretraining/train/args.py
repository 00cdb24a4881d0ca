"""The model, optimizer and LR-schedule argument groups, with academic-budget-bert's flag names (run_pretraining.py's
own groups are in :mod:`pretraining.train.run_args`).

Every field has help text; scripts parse them with :func:`pretraining.cli.parse_args`
and check them with each group's ``validate(check)`` (errors gathered, raised once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pretraining.cli import ArgumentChecker
from pretraining.errors import UserError
from pretraining.model.layers import LN_MODES, NORM_TYPES, UNPADDED_ATTENTION
from pretraining.train.schedules import CURVE_NAMES, SCHEDULES


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
    vocab_size: Optional[int] = field(
        default=None,
        metadata={"help": "Vocabulary size of the model (BERT=30522); default: the tokenizer's (the shards' "
                          "manifest). The embedding is padded to a multiple of --vocab_pad_multiple for speed and the "
                          "padding rows are never predicted"},
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
                          "transformers' BertForPreTraining)", "choices": list(LN_MODES)},
    )
    layer_norm_type: str = field(
        default="pytorch",
        metadata={"help": "pytorch (fused torch LayerNorm), rms_norm, or apex (alias of pytorch, with a notice)",
                  "choices": list(NORM_TYPES)},
    )
    layernorm_embedding: Optional[bool] = field(
        default=None,
        metadata={"help": "LayerNorm on the summed embeddings. Default: off for pre-ln (academic-budget-bert's "
                          "default; the export is then transformers' XLMRobertaXL layout), on for post-ln (BERT's); "
                          "--layernorm_embedding true with pre-ln gives the RobertaPreLayerNorm layout",
                  "nargs": "?", "const": True},
    )
    unpad_inputs: bool = field(
        default=True,
        metadata={"help": "Drop padding tokens before the encoder and run it on the real tokens only for the "
                          "sparse MLM loss, NSP and classification (same loss and gradients, fewer FLOPs; attention "
                          "kernel: --unpadded_attention); false: padded batches"},
    )
    unpadded_attention: str = field(
        default="repad",
        metadata={"help": "Attention over unpadded sequences: repad (masked SDPA on re-padded q/k/v; any device), "
                          "nested (SDPA on jagged nested tensors; GPU), varlen (CUDA flash varlen; needs "
                          "--attention_probs_dropout_prob 0)", "choices": list(UNPADDED_ATTENTION)},
    )
    fused_qkv: bool = field(
        default=False, metadata={"help": "One matmul for the query/key/value projections (same parameters)"}
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile each encoder layer (first steps slower while compiling; needs a C++ "
                          "compiler on the CPU, triton on a GPU)"},
    )

    def validate(self, check: ArgumentChecker) -> None:
        from pretraining.model.modeling import config_problems

        check.require(self.vocab_size is None or self.vocab_size > 0, "--vocab_size must be > 0")
        check.extend(config_problems(self, flag="--"))


@dataclass
class OptimizerArguments:
    """Optimizer choice and hyper-parameters (academic-budget-bert's OptimizerArguments + --lr)."""

    optimizer_type: str = field(
        default="adamw", metadata={"help": "Optimizer: adam (L2 decay), adamw (decoupled decay), lamb, adafactor, "
                                           "lion, stableadamw, sfadamw (schedule-free AdamW: use --curve constant), "
                                           "muon (Muon on the hidden matrices, AdamW on the rest), "
                                           "customized (the seed's --optimizer_conf_file)"}
    )
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (never on biases and LayerNorm weights)"})
    bias_correction: bool = field(default=False, metadata={"help": "LAMB: use Adam-style bias correction"})
    max_coeff: float = field(default=0.3, metadata={"help": "LAMB: upper clip of the trust ratio"})
    min_coeff: float = field(default=0.01, metadata={"help": "LAMB: lower clip of the trust ratio"})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam/AdamW/LAMB beta1 (not Adafactor's: see "
                                                            "--adafactor_beta1)"})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam/AdamW/LAMB beta2"})
    adam_eps: float = field(
        default=1e-6,
        metadata={"help": "Adam/AdamW/LAMB epsilon (academic-budget-bert's LAMB ignored --adam_beta1/2/eps and used "
                          "FusedLamb's 0.9/0.999/1e-8; here LAMB uses the flags)"},
    )

    optimizer_conf_file: Optional[str] = field(
        default=None, metadata={"help": "--optimizer_type customized: the seed's INI file ([general] type = sgd, "
                                        "adam, adamw or dummy; [hyperparams] momentum, nesterov for sgd)"})
    adafactor_beta1: Optional[float] = field(
        default=None,
        metadata={"help": "Adafactor: decay of a first moment (momentum); default none, as academic-budget-bert "
                          "(which ignores the Adam betas for Adafactor): no first moment, the memory-light optimizer"})

    def __post_init__(self):
        self.optimizer_type = str(self.optimizer_type).lower()

    def validate(self, check: ArgumentChecker) -> None:
        from pretraining.train.optimizers import OPTIMIZERS, lamb_coefficients_problem

        check.choice("--optimizer_type", self.optimizer_type, sorted(OPTIMIZERS))
        check.require(self.lr > 0, f"--lr must be > 0 (got {self.lr})")
        check.require(self.weight_decay >= 0, f"--weight_decay must be >= 0 (got {self.weight_decay})")
        check.require(self.adam_eps > 0 or self.optimizer_type == "adafactor",
                      f"--adam_eps must be > 0 (got {self.adam_eps}): it keeps Adam's/LAMB's update finite where the "
                      "second moment is 0 (typical: 1e-6 to 1e-8)")
        check.require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "--adam_beta1/--adam_beta2 must be in [0, 1)")
        check.add(lamb_coefficients_problem(self.min_coeff, self.max_coeff))
        if self.optimizer_type == "customized":
            from pretraining.train.custom_curves import optimizer_spec

            try:
                optimizer_spec(self.optimizer_conf_file)
            except UserError as exc:
                check.require(False, str(exc))
        check.require(self.adafactor_beta1 is None or 0 < self.adafactor_beta1 < 1,
                      "--adafactor_beta1 must be in (0, 1) (or left out: no first moment)")


@dataclass
class SchedulerArguments:
    """Learning-rate schedule (academic-budget-bert's SchedulerArgs + the time budget)."""

    lr_schedule: str = field(
        default="time",
        metadata={"help": "time: LR follows elapsed training time / --total_training_time; step: follows "
                          "optimizer steps / --max_steps (required); constant_step: warmup over --num_warmup_steps, "
                          "then constant",
                  "choices": list(SCHEDULES)},
    )
    curve: str = field(default="linear", metadata={"help": "Decay after warmup: linear (to 0), exp, constant (none: "
                                                          "schedule-free optimizers), or customized "
                                                          "(the seed's curves from --curve_conf_file)",
                                                  "choices": list(CURVE_NAMES)})
    curve_conf_file: Optional[str] = field(
        default=None, metadata={"help": "--curve customized: the seed's INI file ([general] type = cosine_decay, "
                                        "step_decay, inverse_time_decay, elastic_step_decay, ...; [hyperparams])"})
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

    @property
    def total_training_s(self) -> float:
        """--total_training_time in seconds: what the time schedule and the validation schedule count in."""
        return self.total_training_time * 3600.0

    def validate(self, check: ArgumentChecker) -> None:
        check.choice("--lr_schedule", self.lr_schedule, SCHEDULES)
        check.choice("--curve", self.curve, CURVE_NAMES)
        check.require(0 <= self.warmup_proportion < 1, "--warmup_proportion must be in [0, 1)")
        check.require(self.total_training_time > 0, "--total_training_time must be > 0 hours")
        check.require(0 < self.decay_rate <= 1, "--decay_rate must be in (0, 1]")
        check.require(self.decay_step > 0, "--decay_step must be > 0")
        check.require(self.num_warmup_steps >= 0, "--num_warmup_steps must be >= 0")
        if self.curve == "customized":
            from pretraining.train.custom_curves import load_curve

            try:
                load_curve(self.curve_conf_file)
            except UserError as exc:
                check.require(False, str(exc))
