"""Knowledge distillation for fine-tuning: a fine-tuned teacher guides a student.

Classification (Hinton et al., 2015)::

    loss = alpha * CE(student, labels)
           + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

with the KL averaged over the batch (``F.kl_div(log_softmax(s/T), softmax(t/T),
reduction="batchmean")``); the T^2 keeps the soft term's gradients on the scale of the
hard term's. Regression (STS-B): ``alpha * MSE(student, labels) + (1 - alpha) *
MSE(student, teacher)``. The teacher runs in eval mode without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from pretraining.errors import UserError


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      alpha: float, temperature: float, regression: bool = False) -> torch.Tensor:
    """The distillation loss of one batch (see the module docstring), a scalar tensor.

    ``student_logits``/``teacher_logits``: [batch, num_labels] ([batch, 1] or [batch]
    for regression); ``labels``: class ids [batch] (float targets for regression).
    """
    if regression:
        student = student_logits.reshape(-1).float()
        hard = F.mse_loss(student, labels.reshape(-1).float())
        soft = F.mse_loss(student, teacher_logits.reshape(-1).float())
        return alpha * hard + (1.0 - alpha) * soft
    student = student_logits.float()
    hard = F.cross_entropy(student, labels.long())
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1),
                    F.softmax(teacher_logits.float() / temperature, dim=-1), reduction="batchmean")
    return alpha * hard + (1.0 - alpha) * temperature ** 2 * soft


def check_distillation_settings(alpha: float, temperature: float) -> None:
    """UserError unless 0 <= alpha <= 1 and temperature > 0."""
    problems = []
    if not 0.0 <= alpha <= 1.0:
        problems.append(f"--distill_alpha must be in [0, 1] (got {alpha})")
    if not temperature > 0.0:
        problems.append(f"--distill_temperature must be > 0 (got {temperature})")
    if problems:
        raise UserError("; ".join(problems))


class DistillationTrainer(Trainer):
    """A Trainer whose training loss is :func:`distillation_loss` against ``teacher``.

    Evaluation reports the student's own task loss, so eval_loss stays comparable with
    a run without a teacher. The teacher must predict the same labels as the student.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher_model: torch.nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                 **kwargs):
        check_distillation_settings(alpha, temperature)
        super().__init__(*args, **kwargs)
        student_labels, teacher_labels = self.model.config.num_labels, teacher_model.config.num_labels
        if student_labels != teacher_labels:
            raise UserError(f"the teacher predicts {teacher_labels} labels but the task has {student_labels}: "
                            "distil from a teacher fine-tuned on the same task")
        self.teacher = teacher_model.to(self.args.device).eval()
        self.teacher.requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature
        self.regression = self.model.config.problem_type == "regression"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Distillation loss in training; the model's own loss in evaluation."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(**inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature,
                                 self.regression)
        return (loss, outputs) if return_outputs else loss
