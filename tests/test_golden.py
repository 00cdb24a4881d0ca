"""Golden losses: a deterministic tiny run's per-step losses, fixed in tests/golden_losses.json.

A refactor that changes no number keeps them to 1e-6; a change that means to alter the numbers
(a new default, another init) regenerates the file on purpose and says why in its commit:

    GOLDEN_REGEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pretraining.training import PretrainingConfig, pretrain

GOLDEN = Path(__file__).with_name("golden_losses.json")
#: fp32 on the CPU, dropout on, an epoch end (shard switch) at step 4 and a validation after it
FLAGS = ("--max_steps", "8", "--max_steps_per_epoch", "4", "--print_steps", "1", "--seed", "7",
         "--do_validation", "--validation_epochs", "1", "--lr", "1e-3", "--lr_schedule", "step",
         "--warmup_proportion", "0.25")


def _numbers(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"train_loss": [r["loss"] for r in records if r["type"] == "train"],
            "lr": [r["lr"] for r in records if r["type"] == "train"],
            "eval_loss": [r["eval_loss"] for r in records if r["type"] == "eval"]}


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_golden_losses(pretrain_flags, single_thread, engine):
    flags = pretrain_flags(*FLAGS, *(["--deepspeed"] if engine == "deepspeed" else []), job=engine)
    got = _numbers(pretrain(PretrainingConfig.parse(flags)).run_dir)
    assert len(got["train_loss"]) == 8 and len(got["eval_loss"]) >= 1
    if os.environ.get("GOLDEN_REGEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        GOLDEN.write_text(json.dumps({**golden, engine: got}, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())[engine]
    for key, values in expected.items():
        assert len(got[key]) == len(values), key
        for step, (a, b) in enumerate(zip(got[key], values), 1):
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), f"{engine} {key} at record {step}: {a!r} != golden {b!r}"
