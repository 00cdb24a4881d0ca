"""academic-budget-bert's and the seed's interface: their defaults and semantics where they are the
contract (embedding LayerNorm, Adafactor, --max_steps_per_epoch, checkpoint tags, customized curve
and optimizer conf files, no-argument prepare), and the README's prepare -> pretrain -> finetune.sh
-> report flow filling every column."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from pretraining.train.args import ModelArguments, SchedulerArguments
from pretraining.errors import UserError
from pretraining.model.modeling import build_config
from pretraining.train.training import PretrainingConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("single_thread")


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_embedding_layernorm_defaults_as_academic_budget_bert():
    assert not build_config(ModelArguments(encoder_ln_mode="pre-ln"), vocab_size=96).layernorm_embedding
    assert build_config(ModelArguments(encoder_ln_mode="post-ln"), vocab_size=96).layernorm_embedding
    assert build_config(ModelArguments(encoder_ln_mode="pre-ln", layernorm_embedding=True),
                        vocab_size=96).layernorm_embedding
    config = PretrainingConfig.parse(["--dataset_path", "d", "--output_dir", "o", "--layernorm_embedding"])
    assert config.model.layernorm_embedding is True


def test_max_steps_per_epoch_counts_micro_batches(pretrain_flags):
    # micro batch 8, batch 16: 5 micro-batches per epoch are 2 whole optimizer steps
    result = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps_per_epoch", "5", "--num_epochs", "2")))
    assert result.end["step"] == 4 and result.end["reason"] == "num_epochs"
    with pytest.raises(UserError, match="less than one optimizer step of 2 micro-batches"):
        pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps_per_epoch", "1", job="too_few")))


def test_latest_checkpoint_is_the_tag_of_the_newest(pretrain_flags):
    first = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "2")))
    resumed = pretrain(PretrainingConfig.parse(pretrain_flags(
        "--max_steps", "3", "--load_training_checkpoint", str(first.run_dir),
        "--load_checkpoint_id", "latest_checkpoint")))
    assert resumed.end["step"] == 3 and [r["step"] for r in _records(resumed.run_dir, "train")] == [1, 2, 3]


def _conf(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("conf,expected", [
    ("[general]\ntype = step_decay\n[hyperparams]\ndecay_rate = 10\nnum_interval = 2\nnum_iter = 80\n",
     lambda t: 0.1 ** int(t / 40)),
    ("[general]\ntype = inverse_time_decay\n[hyperparams]\nlambda = 0.5\n", lambda t: 1 / (1 + 2.0 * t * 0.5)),
    ("[general]\ntype = cosine_decay\n[hyperparams]\nt_0 = 40\nt_mul = 1\nmin_lr = 0.0\n",
     lambda t: 0.5 * (1 + __import__("math").cos(__import__("math").pi * (t % 41) / 40))),
    ("[general]\ntype = elastic_step_decay\n[hyperparams]\ninterval_shrink_rate = 1.5\nnum_iter = 80\ncr_k = 2\n",
     None),
])
def test_customized_curve_conf_files(conf, expected, tmp_path):
    from pretraining.train.schedules import build_scheduler

    args = SchedulerArguments(lr_schedule="step", curve="customized", warmup_proportion=0.1,
                              curve_conf_file=_conf(tmp_path / "curve.conf", conf))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = build_scheduler(optimizer, args, total_steps=100)
    lrs = [scheduler.step(step) for step in range(101)]
    assert lrs[5] == pytest.approx(1.0)  # linear warmup over the first 10 steps, as the seed
    assert lrs[100] == 0.0 and all(0.0 <= lr <= 2.0 + 1e-9 for lr in lrs)
    if expected is not None:
        for step in (10, 30, 55, 89):
            assert lrs[step] == pytest.approx(2.0 * expected(step - 10)), step
    else:  # elastic step decay: the full LR over the first intervals, then decaying on ever shorter ones
        assert lrs[10] == pytest.approx(2.0) and lrs[60] < lrs[30] and lrs[85] < lrs[60]


def test_customized_curve_and_optimizer_errors_and_runs(pretrain_flags, tmp_path):
    bad = _conf(tmp_path / "bad.conf", "[general]\ntype = eigencurve\n")
    with pytest.raises(UserError, match="curve type 'eigencurve' is not one of"):
        pretrain(PretrainingConfig.parse(pretrain_flags("--curve", "customized", "--curve_conf_file", bad)))
    dummy = _conf(tmp_path / "dummy.conf", "[general]\ntype = dummy\n")
    result = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "2", "--optimizer_type", "customized",
                                                             "--optimizer_conf_file", dummy, job="dummy")))
    initial = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "0", job="init")))
    for (key, a), b in zip(result.model.state_dict().items(), initial.model.state_dict().values()):
        assert torch.equal(a, b), key  # the do-nothing optimizer changed nothing
    sgd = _conf(tmp_path / "sgd.conf", "[general]\ntype = sgd\n[hyperparams]\nmomentum = 0.9\nnesterov = yes\n")
    from pretraining.train.args import OptimizerArguments
    from pretraining.train.optimizers import build_optimizer

    optimizer = build_optimizer(torch.nn.Linear(2, 2), OptimizerArguments(optimizer_type="customized", lr=0.1,
                                                                           optimizer_conf_file=sgd))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"] and \
        optimizer.defaults["momentum"] == 0.9


def test_prepare_with_no_arguments_uses_defaults_offline(tmp_path, monkeypatch, capsys):
    from pretraining.data.prepare_args import PrepareArguments, apply_defaults

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = apply_defaults(PrepareArguments(), seed_default=True)
    assert args.dataset == ["wikipedia-offline"] and args.output_dir == str(Path("data") / "wikipedia-offline")
    err = capsys.readouterr().err
    assert "the packaged Wikipedia lead sections" in err and "writing to data/wikipedia-offline" in err
    named = apply_defaults(PrepareArguments(input_files=["a.txt"]))
    assert named.dataset is None and named.output_dir == str(Path("data") / "input_files")


@pytest.mark.slow
def test_readme_flow_fills_every_column(tiny_shards, tmp_path):
    """prepare (fixture) -> run_pretraining (a run and its control) -> shell/finetune.sh RUN/pretrained ->
    python -m pretraining.report RUNS: every column has a value."""
    runs = tmp_path / "runs"
    common = ["--dataset_path", str(tiny_shards), "--output_dir", str(runs), "--hidden_size", "32",
              "--num_hidden_layers", "2", "--num_attention_heads", "2", "--intermediate_size", "64",
              "--max_position_embeddings", "64", "--train_batch_size", "8", "--train_micro_batch_size_per_gpu", "8",
              "--do_validation", "--no_wandb", "--print_steps", "2"]
    pretrain(PretrainingConfig.parse([*common, "--job_name", "adamw", "--max_steps", "6"]))
    pretrain(PretrainingConfig.parse([*common, "--job_name", "untrained", "--max_steps", "0"]))
    env = {**os.environ, "EPOCHS": "1", "EVAL_STEPS": "1000", "MAX_SEQ_LENGTH": "32", "BATCH_SIZE": "16",
           "WARMUP_STEPS": "0", "LR": "1e-3", "SEEDS": "1 2"}
    for job in ("adamw", "untrained"):
        done = subprocess.run(["bash", str(ROOT / "shell" / "finetune.sh"), str(runs / job / "pretrained"),
                               "rotten_tomatoes", "--max_train_samples", "32", "--max_eval_samples", "32",
                               "--disable_tqdm", "true"], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (runs / job / "finetune" / "rotten_tomatoes" / "all_results.json").is_file()  # where the report reads
    csv_path = tmp_path / "results.csv"
    done = subprocess.run([str(Path(os.sys.executable)), "-m", "pretraining.report.table", str(runs), "--csv", str(csv_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(csv_path.read_text()))}
    assert set(rows) == {"adamw", "untrained"}
    not_applicable = {"other_metrics"}  # rotten_tomatoes has accuracy and F1 only
    empty = [k for k, v in rows["adamw"].items() if v == "" and k not in not_applicable]
    assert not empty, empty
    assert rows["untrained"]["optimizer"] == "none" and rows["adamw"]["control"] == "untrained"
