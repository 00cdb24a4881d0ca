"""run_pretraining.py on the plain-torch engine: outputs, resume, time budget, validation, errors.

Every run is a real 2-layer BERT trained in-process on the tiny real-Wikipedia shards.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
import transformers

from pretraining.errors import UserError
from pretraining.train.run_setup import build_run
from pretraining.train.training import PretrainingConfig, pretrain
from run_pretraining import main

pytestmark = pytest.mark.usefixtures("single_thread")


def run(flags, **kwargs):
    return pretrain(PretrainingConfig.parse(flags), **kwargs)


def records(run_dir, kind=None):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if kind is None or r["type"] == kind]


class FakeClock:
    """Advances ``tick`` seconds every time it is read."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_outputs_follow_the_contract_and_export_loads_in_transformers(pretrain_flags, bert_tokenizer):
    import transformers

    result = run(pretrain_flags("--max_steps", "5", "--print_steps", "2", "--encoder_ln_mode", "post-ln"))
    run_dir = result.run_dir

    args = json.loads((run_dir / "args.json").read_text())
    assert args["precision"] == "fp32" and args["world_size"] == 1 and args["optimizer_type"] == "adamw"
    train, end = records(run_dir, "train"), records(run_dir, "end")
    assert [r["step"] for r in train] == [2, 4, 5]  # every --print_steps, plus the last partial interval
    assert set(train[0]) == {"type", "step", "epoch", "elapsed_s", "wall_s", "lr", "loss", "seq_per_s",
                             "tokens_per_s", "tokens", "samples"}
    assert [r["samples"] for r in train] == [32, 64, 80]
    assert all(0 < a["tokens"] < b["tokens"] <= 64 * b["samples"] for a, b in zip(train, train[1:]))
    assert end == [{"type": "end", "reason": "max_steps", "step": 5, "elapsed_s": train[-1]["elapsed_s"],
                    "tokens": train[-1]["tokens"], "final_loss": train[-1]["loss"]}]
    assert result.end == {k: v for k, v in end[0].items() if k != "type"}
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()] == ["epoch0-step5"]

    hf_model, info = transformers.BertForMaskedLM.from_pretrained(run_dir / "pretrained", output_loading_info=True)
    assert not any(info.values()), info
    _, info = transformers.BertForPreTraining.from_pretrained(run_dir / "pretrained", output_loading_info=True)
    # a masked-LM run trains no pooler and no NSP head: none is made up, and transformers says they are fresh
    assert set(info["missing_keys"]) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                         "cls.seq_relationship.weight", "cls.seq_relationship.bias"}
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "pretrained")
    assert tokenizer.vocab == bert_tokenizer.vocab
    # the export holds the trained weights: same MLM logits as the run's own model
    batch = tokenizer(["the history of the city", "a short sentence"], padding=True, return_tensors="pt")
    result.model.eval()
    with torch.no_grad():
        ours = result.model(**batch).prediction_logits[..., :len(tokenizer)]
        theirs = hf_model.eval()(**batch).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_resume_continues_the_same_run_exactly(pretrain_flags, tmp_path):
    # steps 1-6 in one run, then 7-14 after a resume (crossing an epoch end at step 9, with dropout and
    # prefetch on) must give the losses of one uninterrupted 14-step run
    straight = run(pretrain_flags("--max_steps", "14", job="straight"))
    first = run(pretrain_flags("--max_steps", "6", job="split"))
    assert first.end["reason"] == "max_steps"
    resumed = run(pretrain_flags("--max_steps", "14", "--load_training_checkpoint", str(first.run_dir),
                                 "--load_checkpoint_id", "latest", job="split"))

    expected = [(r["step"], r["epoch"], r["loss"], r["tokens"]) for r in records(straight.run_dir, "train")]
    got = [(r["step"], r["epoch"], r["loss"], r["tokens"]) for r in records(resumed.run_dir, "train")]
    assert got == expected and len(got) == 14 and expected[-1][1] == 1
    assert records(resumed.run_dir, "end")[0]["step"] == 14
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    # resuming a finished run trains no further step
    again = run(pretrain_flags("--max_steps", "14", "--load_training_checkpoint", str(first.run_dir), job="split"))
    assert again.end["step"] == 14 and len(records(again.run_dir, "train")) == 14


def test_resume_refuses_a_checkpoint_of_another_model(pretrain_flags):
    first = run(pretrain_flags("--max_steps", "1"))
    with pytest.raises(UserError, match="hidden_size: checkpoint 32, this run 64"):
        run(pretrain_flags("--max_steps", "2", "--hidden_size", "64", "--load_training_checkpoint", str(first.run_dir)))
    with pytest.raises(UserError, match=r"holds an earlier run \(checkpoints epoch0-step1, metrics.jsonl"):
        run(pretrain_flags("--max_steps", "2"))


@pytest.mark.slow
def test_time_budget_stops_the_run_and_drives_the_schedule(pretrain_flags):
    from pretraining.train.schedules import time_multiplier

    # a fake clock: 30 s per reading; budget 0.2 h = 720 s with 25% warmup, early exit at 0.15 h = 540 s
    flags = pretrain_flags("--lr_schedule", "time", "--total_training_time", "0.2", "--warmup_proportion", "0.25",
                           "--early_exit_time_marker", "0.15", "--do_validation", "--validation_epochs_begin", "1")
    config = PretrainingConfig.parse(flags)
    result = pretrain(config, clock=FakeClock(30.0))
    train = records(result.run_dir, "train")
    assert result.end["reason"] == "time_budget"
    elapsed = [r["elapsed_s"] for r in train]
    assert elapsed[-1] >= 540 > elapsed[-2]  # checked every step: stopped by the first step past the marker
    assert elapsed == sorted(set(elapsed))
    # the LR of each step is the schedule at the training time when the step began
    began = [0.0] + elapsed[:-1]
    for start, record in zip(began, train):
        assert record["lr"] == pytest.approx(2e-3 * time_multiplier(start, config.scheduler), rel=1e-12)
    warmup = [r["lr"] for s, r in zip(began, train) if s < 180]
    decay = [r["lr"] for s, r in zip(began, train) if s >= 180]
    assert len(warmup) > 2 and len(decay) > 2
    assert warmup == sorted(warmup) and decay == sorted(decay, reverse=True) and decay[-1] > 0
    evals = records(result.run_dir, "eval")  # validation at epoch ends, stamped with the training time
    assert evals and all(e["elapsed_s"] in elapsed for e in evals)


def test_validation_and_checkpoint_time_is_not_training_time():
    from pretraining.train.progress import TrainingTimer

    now = [100.0]
    timer = TrainingTimer(lambda: now[0], offset_s=50.0)  # resumed after 50 s of training
    now[0] += 10
    assert timer.elapsed() == 60
    with timer.paused():
        now[0] += 1000  # validating, checkpointing
    now[0] += 5
    assert timer.elapsed() == 65


@pytest.mark.slow
def test_validation_and_early_stopping(pretrain_flags, tiny_shards):
    from pretraining.data.collator import PretrainingCollator
    from pretraining.data.shards import list_shards, read_shard
    from pretraining.model.modeling import BertForPreTraining
    from transformers import AutoTokenizer

    flags = pretrain_flags("--do_validation", "--validation_epochs_begin", "1", "--validation_micro_batch", "5",
                           "--use_early_stopping", "--early_stop_time", "0", "--early_stop_eval_loss", "5.0")
    result = run(flags)
    assert result.end["reason"] == "early_stop"
    evals = records(result.run_dir, "eval")
    steps_in_first_epoch = records(result.run_dir, "train")[-1]["step"]
    assert [e["step"] for e in evals] == [steps_in_first_epoch] and result.end["step"] == steps_in_first_epoch
    assert 5.0 < evals[0]["eval_loss"] < 11.0

    # the logged eval loss is the mean MLM loss over all predictions of the test shard, recomputed
    # sequence by sequence from the exported model
    model = BertForPreTraining.from_pretrained(result.run_dir / "pretrained").eval()
    tokenizer = AutoTokenizer.from_pretrained(result.run_dir / "pretrained")
    collate = PretrainingCollator(len(tokenizer), tokenizer.mask_token_id, tokenizer.all_special_ids)
    rows = read_shard(list_shards(tiny_shards, "test")[0])
    total, predictions = 0.0, 0
    with torch.no_grad():
        for i in range(len(rows["input_ids"])):
            batch = collate({k: v[i:i + 1] for k, v in rows.items()})
            count = int((batch["labels"] != -100).sum())
            total += float(model(**batch).loss) * count
            predictions += count
    assert evals[0]["eval_loss"] == pytest.approx(total / predictions, rel=1e-5)


def test_nonfinite_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(pretrain_flags, monkeypatch,
                                                                                     capsys):
    from pretraining.model.modeling import BertForPreTraining

    forward, calls = BertForPreTraining.forward, []

    def nan_from_step_8(self, **batch):  # fault injection: 2 micro-batches per step
        out = forward(self, **batch)
        calls.append(1)
        if len(calls) > 14:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BertForPreTraining, "forward", nan_from_step_8)
    result = run(pretrain_flags("--max_steps_per_epoch", "6", "--num_epochs_between_checkpoints", "1"))
    assert result.end["reason"] == "nonfinite_loss" and result.end["step"] == 7
    out = capsys.readouterr().out
    assert "the training loss became nan at step 8" in out and "stopped before applying that update" in out
    assert "--load_checkpoint_id epoch2-step6" in out
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    checkpoints = result.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["epoch1-step3", "epoch2-step6"]
    assert (checkpoints / "latest").read_text() == "epoch2-step6"
    assert not (result.run_dir / "pretrained").exists()


@pytest.mark.parametrize("extra, message", [
    (["--train_batch_size", "20"], "--train_batch_size 20 is not a multiple of --train_micro_batch_size_per_gpu 8"),
    (["--vocab_size", "1000"], "--vocab_size 30522"),
    (["--lr_schedule", "step"], "--lr_schedule step needs --max_steps"),
    (["--lr_schedule", "step", "--max_steps", "500", "--warmup_proportion", "0", "--num_warmup_steps", "1000"],
     "the warmup (1000 steps) must be shorter than --max_steps (500)"),
    (["--optimizer_type", "lamb", "--min_coeff", "0.5", "--max_coeff", "0.1"], "LAMB needs 0 <= --min_coeff <= --max_coeff"),
    (["--hidden_size", "48", "--num_attention_heads", "5"], "--hidden_size (48) must be divisible by --num_attention_heads (5)"),
    (["--hidden_act", "swishy"], "--hidden_act 'swishy' is not one of"),
    (["--max_steps", "1", "--gradient_accumulation_steps", "3"], "disagrees with --train_batch_size"),
])
def test_bad_arguments_get_one_clear_error(pretrain_flags, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run(pretrain_flags(*extra))


def test_every_argument_error_is_reported_at_once(pretrain_flags, capsys):
    flags = pretrain_flags("--train_batch_size", "20", "--fp16", "--bf16", "--print_steps", "0", "--lr", "-1")
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid arguments")
    for part in ("--train_batch_size 20", "--fp16 and --bf16", "--print_steps must be > 0", "--lr must be > 0"):
        assert part in err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_fp16_without_a_gpu_is_refused(pretrain_flags):
    with pytest.raises(UserError, match="--fp16 needs a CUDA GPU"):
        run(pretrain_flags("--fp16", "--max_steps", "1"))


def test_empty_dataset_folder_is_refused(pretrain_flags, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no train shards"):
        run(pretrain_flags(dataset=empty))
    flags = pretrain_flags()
    del flags[flags.index("--dataset_path"):flags.index("--dataset_path") + 2]
    with pytest.raises(UserError, match="--dataset_path is required"):
        run(flags)


def test_shards_too_small_for_one_step_are_refused(pretrain_flags):
    with pytest.raises(UserError, match="fewer than one optimizer step"):
        run(pretrain_flags("--train_batch_size", "2048", "--train_micro_batch_size_per_gpu", "8"))


def test_dynamic_masking_shards_train(pretrain_flags, tiny_shards_dynamic):
    result = run(pretrain_flags("--max_steps", "3", dataset=tiny_shards_dynamic))
    losses = [r["loss"] for r in records(result.run_dir, "train")]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[0] == pytest.approx(math.log(30522), abs=0.3)


def test_masking_comes_from_the_manifest_and_static_shards_refuse_a_contradicting_flag(pretrain_flags, tiny_shards,
                                                                                        tiny_shards_dynamic):
    def collator(*flags, dataset):
        built = build_run(PretrainingConfig.parse(pretrain_flags("--max_steps", "1", *flags, dataset=dataset)))
        return (built.collate.masked_lm_prob, built.collate.max_predictions_per_seq), built.notices

    # the shards were prepared with --max_predictions_per_seq 10 (and the default 0.15): training uses that
    settings, notices = collator(dataset=tiny_shards_dynamic)
    assert settings == (0.15, 10) and not any("manifest.json" in n for n in notices)
    trained = run(pretrain_flags("--max_steps", "1", job="recorded", dataset=tiny_shards_dynamic))
    recorded = json.loads((trained.run_dir / "args.json").read_text())
    assert (recorded["masked_lm_prob"], recorded["max_predictions_per_seq"]) == (0.15, 10)  # what it trained with
    settings, notices = collator("--masked_lm_prob", "0.3", dataset=tiny_shards_dynamic)
    assert settings == (0.3, 10) and any("--masked_lm_prob 0.3 replaces the 0.15" in n for n in notices)
    assert collator("--max_predictions_per_seq", "10", dataset=tiny_shards)[0] == (0.15, 10)  # agrees: fine
    with pytest.raises(UserError, match=r"--max_predictions_per_seq 20 contradicts .* statically masked"):
        collator("--max_predictions_per_seq", "20", dataset=tiny_shards)


@pytest.mark.slow
def test_pretraining_can_start_from_an_exported_model(pretrain_flags, capsys):
    first = run(pretrain_flags("--max_steps", "2", job="first"))
    start = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = run(pretrain_flags("--model_name_or_path", str(first.run_dir / "pretrained"), "--hidden_size", "64",
                                "--max_steps", "1", job="second"))
    assert "the architecture comes from" in capsys.readouterr().out
    assert second.model.config.hidden_size == 32  # from the checkpoint, not the flag
    query = "bert.encoder.layer.0.attention.self.query.weight"
    trained = second.model.state_dict()[query]
    assert not torch.equal(trained, start[query])
    torch.testing.assert_close(trained, start[query], atol=3e-3, rtol=0)  # one AdamW step of lr 2e-3 away
    with pytest.raises(UserError, match="--model_name_or_path .* could not be loaded"):
        run(pretrain_flags("--model_name_or_path", str(first.run_dir / "missing"), job="third"))


@pytest.mark.slow
def test_pretraining_can_continue_from_a_hub_bert_checkpoint_without_mlm_head(pretrain_flags, minilm_dir):
    """The packaged MiniLM is a bare transformers BertModel folder, as most Hub BERTs are."""
    result = run(pretrain_flags("--model_name_or_path", str(minilm_dir), "--max_steps", "1",
                                job="minilm"))
    reference = transformers.BertModel.from_pretrained(str(minilm_dir)).state_dict()
    weights = result.model.state_dict()
    assert result.model.config.hidden_size == 384 and result.model.config.num_hidden_layers == 6
    key = "encoder.layer.5.output.dense.weight"
    torch.testing.assert_close(weights["bert." + key], reference[key], atol=3e-3, rtol=0)
    losses = [r["loss"] for r in records(result.run_dir, "train")]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert (result.run_dir / "pretrained" / "config.json").exists()


@pytest.mark.slow
def test_wandb_runs_offline_without_a_key_and_a_resume_continues_its_run(pretrain_flags, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: no credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    flags = [f for f in pretrain_flags("--max_steps", "1") if f != "--no_wandb"]
    first = run(flags)
    state = json.loads(next((first.run_dir / "checkpoints").glob("*/state.json")).read_text())
    run_id = state["wandb_run_id"]
    assert run_id and len(list((first.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 1
    time.sleep(1.1)  # wandb names offline run folders by the second: a resume in the same second reuses the folder
    second = run(flags[:-1] + ["2", "--load_training_checkpoint", str(first.run_dir)])
    state = json.loads(next((second.run_dir / "checkpoints").glob("*-step2/state.json")).read_text())
    assert state["wandb_run_id"] == run_id
    assert len(list((first.run_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # same run, resumed


def test_wandb_mode_and_secret_redaction(monkeypatch, tmp_path):
    from pretraining.train.metrics import redact, wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode(no_wandb=False) == "offline" and wandb_mode(no_wandb=True) == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(no_wandb=False) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(no_wandb=False) == "disabled"
    assert redact({"lr": 1, "hub_token": "t", "api_key": "k", "job_name": "j"}) == {"lr": 1, "job_name": "j"}


#: every flag of academic-budget-bert's run_pretraining.py (its seven argument dataclasses)
ACADEMIC_BUDGET_BERT_FLAGS = """
deepspeed deepspeed_transformer_kernel stochastic_mode attention_dropout_checkpoint normalize_invertible
gelu_checkpoint gradient_clipping steps_per_print wall_clock_breakdown prescale_gradients gradient_predivide_factor
fp16 fp16_backend fp16_opt model_type model_name_or_path config_name tokenizer_name cache_dir pretrain_run_args
vocab_size hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act hidden_dropout_prob
attention_probs_dropout_prob max_position_embeddings type_vocab_size initializer_range fused_linear_layer
sparse_mask_prediction encoder_ln_mode layer_norm_type dataset_path num_workers async_worker data_loader_type
optimizer_type weight_decay bias_correction max_coeff min_coeff adam_beta1 adam_beta2 adam_eps seed output_dir
max_predictions_per_seq local_rank load_training_checkpoint load_checkpoint_id num_epochs_between_checkpoints
job_name project_name max_steps max_steps_per_epoch print_steps do_validation validation_epochs
validation_epochs_begin validation_epochs_end validation_begin_proportion validation_end_proportion
validation_micro_batch add_nsp current_run_id early_exit_time_marker total_training_time finetune_time_markers
finetune_checkpoint_at_end gradient_accumulation_steps train_batch_size train_micro_batch_size_per_gpu num_epochs
lr use_early_stopping early_stop_time early_stop_eval_loss scale_cnt_limit log_throughput_every lr_schedule curve
warmup_proportion decay_rate decay_step num_warmup_steps
""".split()


def test_every_academic_budget_bert_flag_is_accepted_and_no_ops_say_so(pretrain_flags, tmp_path):
    import dataclasses

    from pretraining.train.config import ARGUMENT_GROUPS, check_arguments

    ours = {f.name for group in ARGUMENT_GROUPS for f in dataclasses.fields(group)}
    assert sorted(set(ACADEMIC_BUDGET_BERT_FLAGS) - ours) == []
    flags = pretrain_flags("--num_workers", "8", "--deepspeed_transformer_kernel", "--log_throughput_every", "5",
                           "--fp16_backend", "apex", "--config_name", "bert-large-uncased", "--add_nsp",
                           "--current_run_id", "7")
    config = PretrainingConfig.parse(flags)
    _, notices = check_arguments(config, world_size=1)
    for flag in ("num_workers", "deepspeed_transformer_kernel", "log_throughput_every", "fp16_backend", "config_name"):
        assert any(n.startswith(f"--{flag} has no effect here") for n in notices), flag
    assert config.model.model_type == "bert-mlm-nsp" and config.run.job_name == "tiny-7"

    args_file = tmp_path / "args.json"  # one JSON file of flags works as well
    args_file.write_text(json.dumps({"dataset_path": "d", "output_dir": "o", "lr": 0.5, "deepspeed": True}))
    from_file = PretrainingConfig.parse([str(args_file)])
    assert (from_file.optimizer.lr, from_file.backend.deepspeed, from_file.data.dataset_path) == (0.5, True, "d")
