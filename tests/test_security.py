"""Security: no secret in any output, no code from a checkpoint ever runs, nothing written outside --output_dir."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("single_thread")

SECRETS = {"WANDB_API_KEY": "wandb0secret0" + "7" * 27, "HF_TOKEN": "hf_env0secret0token",
           "HUGGING_FACE_HUB_TOKEN": "hf_legacy0secret0token"}


def leaks(folder: Path, secrets, *texts: str) -> list[str]:
    """Files under ``folder`` (read as bytes: pickles, checkpoints, logs) and texts that contain a secret."""
    found = [str(p) for p in folder.rglob("*") if p.is_file() and any(s.encode() in p.read_bytes() for s in secrets)]
    return found + [f"output {i}" for i, text in enumerate(texts) if any(s in text for s in secrets)]


class PickledCode:
    """Unpickling this runs a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fails_with(main, argv, capsys, message: str) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(message, err, re.S), err[-3000:]


@pytest.mark.slow
def test_pretraining_writes_no_secret_and_nothing_outside_its_folder(pretrain_flags, tmp_path, monkeypatch, capsys):
    from run_pretraining import main

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key is set: offline keeps it from the network, W&B still runs
    monkeypatch.setenv("WANDB_SILENT", "true")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    flags = [f for f in pretrain_flags("--max_steps", "2", "--num_epochs_between_checkpoints", "1",
                                       "--max_steps_per_epoch", "2") if f != "--no_wandb"]
    main(flags)
    out = capsys.readouterr()
    runs = tmp_path / "runs"
    assert (runs / "tiny" / "wandb").is_dir() and (runs / "tiny" / "checkpoints" / "latest").is_file()
    assert leaks(runs, SECRETS.values(), out.out, out.err) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "runs"] and not any(cwd.iterdir())
    assert sorted(p.name for p in runs.iterdir()) == ["tiny"]


@pytest.mark.parametrize("job_name", ["../escape", "/tmp/escape", "..", "a/b"])
def test_a_run_cannot_be_written_outside_output_dir(job_name, pretrain_flags, tmp_path, capsys):
    from run_pretraining import main

    flags = pretrain_flags("--max_steps", "1")
    flags[flags.index("--job_name") + 1] = job_name
    fails_with(main, flags, capsys, rf"--job_name '{re.escape(job_name)}' must be a plain folder name")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


@pytest.mark.slow
def test_run_glue_writes_no_secret_and_keeps_the_hub_token_out_of_its_outputs(tiny_exports, tmp_path, monkeypatch,
                                                                             capsys):
    from run_glue import main

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    hub_token = "hf_flag0secret0token"
    main(["--model_name_or_path", str(tiny_exports["post-ln"]), "--task_name", "rotten_tomatoes", "--do_train",
          "--do_eval", "--max_train_samples", "16", "--max_eval_samples", "8", "--num_train_epochs", "1",
          "--save_strategy", "epoch", "--output_dir", str(tmp_path / "ft"), "--report_to", "none",
          "--hub_token", hub_token, "--disable_tqdm", "true"])
    out = capsys.readouterr()
    assert list((tmp_path / "ft").glob("checkpoint-*/training_args.bin"))  # the pickled arguments were written...
    assert leaks(tmp_path / "ft", [hub_token, *SECRETS.values()], out.out, out.err) == []  # ...without the token
    assert os.environ["HF_TOKEN"] == hub_token  # where huggingface_hub takes it from, for --push_to_hub
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "ft"] and not any(cwd.iterdir())


# --- code in checkpoints ---------------------------------------------------------------------------------------


def test_a_training_checkpoint_with_pickled_code_is_refused(pretrain_flags, tmp_path, capsys):
    from pretraining.atomic import sha256_file
    from run_pretraining import main

    main(pretrain_flags("--max_steps", "1"))
    folder = next((tmp_path / "runs" / "tiny" / "checkpoints").glob("epoch*"))
    marker = tmp_path / "code-ran"
    torch.save({"model": PickledCode(marker)}, folder / "engine" / "engine.pt")
    sums = json.loads((folder / "checksums.json").read_text())  # crafted with matching checksums
    sums["engine/engine.pt"] = sha256_file(folder / "engine" / "engine.pt")
    (folder / "checksums.json").write_text(json.dumps(sums))
    fails_with(main, pretrain_flags("--max_steps", "2", "--load_training_checkpoint", str(tmp_path / "runs" / "tiny")),
               capsys, r"checkpoint \S+ was refused: it holds pickled objects or code.*GLOBAL posix.system")
    assert not marker.exists()


@pytest.fixture
def hostile_models(tmp_path, bert_tokenizer):
    """Model folders that run code when loaded carelessly: a pickled-code weights file; an auto_map to local code."""
    from pretraining.model.modeling import BertConfig, BertForSequenceClassification

    marker = tmp_path / "code-ran"
    pickled = tmp_path / "pickled"
    BertForSequenceClassification(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": PickledCode(marker)}, pickled / "pytorch_model.bin")
    bert_tokenizer.save_pretrained(pickled)

    remote = tmp_path / "remote"
    bert_tokenizer.save_pretrained(remote)
    (remote / "hostile.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                       "from transformers import PretrainedConfig\n"
                                       "class HostileConfig(PretrainedConfig):\n    model_type = 'hostile'\n")
    (remote / "config.json").write_text(json.dumps({"model_type": "hostile", "auto_map": {
        "AutoConfig": "hostile.HostileConfig", "AutoModelForSequenceClassification": "hostile.HostileConfig"}}))
    tokenizer_config = json.loads((remote / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["hostile.HostileConfig", None]}
    (remote / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return {"pickled": pickled, "remote": remote, "marker": marker}


@pytest.mark.slow
def test_run_glue_never_runs_code_shipped_with_a_model(hostile_models, tmp_path, capsys):
    from run_glue import main

    common = ["--task_name", "rotten_tomatoes", "--do_train", "--max_train_samples", "8", "--output_dir",
              str(tmp_path / "out"), "--report_to", "none"]
    fails_with(main, ["--model_name_or_path", str(hostile_models["pickled"]), *common], capsys,
               r"error: the model \S+pickled' was refused: its weights file holds pickled objects or code")
    fails_with(main, ["--model_name_or_path", str(hostile_models["remote"]), *common], capsys,
               r"error: the model \S+remote' needs its own Python code to load.*never runs code")
    assert not hostile_models["marker"].exists()


def test_run_pretraining_never_runs_code_shipped_with_a_model_or_tokenizer(hostile_models, pretrain_flags, capsys):
    from run_pretraining import main

    fails_with(main, pretrain_flags("--model_name_or_path", str(hostile_models["remote"]), "--max_steps", "1"), capsys,
               r"--model_name_or_path \S+remote' could not be loaded")
    main(pretrain_flags("--tokenizer_name", str(hostile_models["remote"]), "--max_steps", "1", job="tokenizer"))
    assert not hostile_models["marker"].exists()


def test_no_code_path_opts_into_remote_code_or_unsafe_pickles():
    sources = [ROOT / name for name in ("prepare_dataset.py", "run_pretraining.py", "run_glue.py")]
    sources += sorted((ROOT / "pretraining").rglob("*.py"))
    for path in sources:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        assert not re.search(r"weights_only\s*=\s*False", text), path
        assert all("weights_only=True" in call for call in re.findall(r"torch\.load\([^)]*\)", text)), path
