"""Knowledge distillation: the loss against hand-computed values, and a student that learns from a teacher.

pretraining.finetune.distillation (which imports transformers.Trainer) is imported through the
``kd`` fixture, after pretraining.model.modeling: importing Trainer replaces the ``transformers``
module object, and modeling.py (``transformers.initialization``) must see the original.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretraining.errors import UserError
from pretraining.model.modeling import BertConfig, BertForSequenceClassification


@pytest.fixture(scope="module")
def kd():
    import pretraining.finetune.distillation

    return pretraining.finetune.distillation


def _numpy_loss(student, teacher, labels, alpha, temperature):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -np.mean(log_softmax(student)[np.arange(len(labels)), labels])
    p_teacher = np.exp(log_softmax(teacher / temperature))
    kl = np.sum(p_teacher * (np.log(p_teacher) - log_softmax(student / temperature))) / len(labels)
    return alpha * ce + (1 - alpha) * temperature ** 2 * kl


def test_loss_by_hand(kd):
    # Uniform student, teacher [ln 3, 0] at T=1: p_t = (3/4, 1/4), CE = ln 2,
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2).
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = kd.distillation_loss(student, teacher, torch.tensor([0]), alpha=0.3, temperature=1.0)
    assert loss.item() == pytest.approx(0.3 * math.log(2) + 0.7 * kl, rel=1e-6)
    # At T=2 the teacher is softened to (sqrt 3, 1) / (sqrt 3 + 1) and the KL term is scaled by 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    loss2 = kd.distillation_loss(student, teacher, torch.tensor([1]), alpha=0.5, temperature=2.0)
    assert loss2.item() == pytest.approx(0.5 * math.log(2) + 0.5 * 4 * kl2, rel=1e-6)


@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.5, 2.0), (0.9, 4.0), (1.0, 3.0)])
def test_loss_matches_formula(kd, alpha, temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(8, 3)) * 2, rng.normal(size=(8, 3)) * 2
    labels = rng.integers(0, 3, 8)
    got = kd.distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha, temperature)
    assert got.item() == pytest.approx(_numpy_loss(student, teacher, labels, alpha, temperature), rel=1e-5)


def test_soft_gradient_is_t_times_probability_gap(kd):
    # d/ds of T^2 KL(p_t || softmax(s/T)), averaged over the batch, is T (p_s - p_t) / B.
    student = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    temperature = 3.0
    kd.distillation_loss(student, teacher, torch.tensor([0, 1]), alpha=0.0, temperature=temperature).backward()
    gap = torch.softmax(student.detach() / temperature, -1) - torch.softmax(teacher / temperature, -1)
    torch.testing.assert_close(student.grad, temperature * gap / 2)


def test_regression_loss(kd):
    student = torch.tensor([[1.0], [2.0]])
    teacher = torch.tensor([[1.5], [1.0]])
    labels = torch.tensor([0.0, 2.0])
    loss = kd.distillation_loss(student, teacher, labels, alpha=0.25, temperature=5.0, regression=True)
    assert loss.item() == pytest.approx(0.25 * (1 + 0) / 2 + 0.75 * (0.25 + 1) / 2)


def _polarity(bert_tokenizer):
    import datasets

    from pretraining.finetune import glue
    from pretraining.resources import pang_lee_polarity

    lines = [line for line in pang_lee_polarity().read_bytes().decode("latin-1").splitlines() if line.strip()]
    ds = datasets.Dataset.from_dict({"sentence1": [line.split(" ", 1)[1] for line in lines],
                                     "label": [int(line.startswith("__label__pos")) for line in lines]})
    return glue.tokenize_splits(glue.TaskData(glue.TASKS["sst2"], ds), bert_tokenizer, 32).train


def _make_teacher(export_dir, batch, out_dir):
    """A tiny classifier whose logit gap is a large multiple of its pooled features' main
    direction of variation: decisive, input-dependent, about half of each class."""
    from pretraining.finetune import glue

    torch.manual_seed(0)  # the export has no pooler (masked-LM pretraining trains none): it starts fresh, seeded
    teacher, _ = glue.load_model_for_task(str(export_dir), 2, "single_label_classification")
    teacher.eval()
    with torch.no_grad():
        pooled = teacher.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).pooler_output
        mean = pooled.mean(0)
        direction = torch.linalg.svd(pooled - mean, full_matrices=False).Vh[0]
        scale = 4.0 / ((pooled - mean) @ direction).std()
        teacher.classifier.weight.copy_(torch.stack([-direction, direction]) * scale / 2)
        teacher.classifier.bias.copy_(torch.stack([mean @ direction, -(mean @ direction)]) * scale / 2)
    teacher.save_pretrained(out_dir)
    return out_dir


def _agreement_and_kl(model, teacher, batch):
    model.eval()
    with torch.no_grad():
        s = torch.log_softmax(model(**batch).logits, -1)
        t = torch.softmax(teacher(**batch).logits, -1)
    return float((s.argmax(-1) == t.argmax(-1)).float().mean()), float((t * (t.log() - s)).sum(-1).mean())


@pytest.mark.slow
def test_distilled_student_learns_the_teacher(kd, tiny_exports, bert_tokenizer, tmp_path):
    from transformers import DataCollatorWithPadding, TrainingArguments

    from pretraining.finetune import glue

    train = _polarity(bert_tokenizer).select(range(160))
    collator = DataCollatorWithPadding(bert_tokenizer)
    batch = collator([{k: row[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for row in train])
    teacher_dir = _make_teacher(tiny_exports["post-ln"], batch, tmp_path / "teacher")
    teacher, missing = glue.load_model_for_task(str(teacher_dir), 2, "single_label_classification")
    assert not missing
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_share = float(teacher.eval()(**batch).logits.argmax(-1).float().mean())
    assert 0.3 < teacher_share < 0.7
    torch.manual_seed(0)
    student, _ = glue.load_model_for_task(str(tiny_exports["pre-ln"]), 2, "single_label_classification")
    agree_before, kl_before = _agreement_and_kl(student, teacher, batch)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, num_train_epochs=3,
                             learning_rate=3e-3, save_strategy="no", report_to="none", disable_tqdm=True,
                             use_cpu=True, seed=0, logging_steps=1000)
    trainer = kd.DistillationTrainer(model=student, args=args, train_dataset=train, data_collator=collator,
                                  teacher_model=teacher, alpha=0.0, temperature=1.0)
    trainer.train()
    agree_after, kl_after = _agreement_and_kl(student, teacher, batch)
    assert kl_after < 0.5 * kl_before, (kl_before, kl_after)
    assert agree_after > max(agree_before, 0.75), (agree_before, agree_after)
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_distillation_settings_and_label_mismatch(kd, tmp_path):
    from transformers import TrainingArguments

    def tiny(num_labels):
        return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        num_labels=num_labels))

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(UserError, match="teacher predicts 3 labels but the task has 2"):
        kd.DistillationTrainer(model=tiny(2), args=args, teacher_model=tiny(3))
    with pytest.raises(UserError, match=r"--distill_alpha must be in \[0, 1\].*--distill_temperature must be > 0"):
        kd.DistillationTrainer(model=tiny(2), args=args, teacher_model=tiny(2), alpha=1.5, temperature=0.0)
