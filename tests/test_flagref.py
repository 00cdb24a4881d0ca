"""The flag reference in docs/FLAGS.md is generated from the code and must be current."""

import dataclasses

import pytest

from pretraining import flagref


def test_flag_reference_is_current():
    assert flagref.main(["--check"]) == 0, "docs/FLAGS.md is stale: run `python -m pretraining.flagref`"


def test_every_flag_has_help_and_appears_in_the_reference():
    text = flagref.render()
    for refs in flagref.SCRIPTS.values():
        for ref in refs:
            cls = flagref._load(ref)
            for f in dataclasses.fields(cls):
                if not f.init or f.name.startswith("_"):
                    continue
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
                assert f"`--{f.name}`" in text


def test_seed_flags_are_documented():
    text = flagref.render()
    for flag in ["model_type", "tokenizer_name", "hidden_size", "optimizer_type", "lr_schedule", "curve",
                 "total_training_time", "early_exit_time_marker", "deepspeed", "data_loader_type",
                 "max_seq_length", "num_train_shards", "dup_factor", "task_name"]:
        assert f"`--{flag}`" in text, flag


@pytest.mark.parametrize("script", sorted(flagref.SCRIPTS))
def test_help_prints_every_group(script, capsys):
    """argparse formats help text with %: a literal '%' in a help string once broke prepare_dataset.py --help."""
    from pretraining.cli import parse_args

    groups = [flagref._load(ref) for ref in flagref.SCRIPTS[script]]
    with pytest.raises(SystemExit) as exc:
        parse_args(groups, ["--help"])
    assert exc.value.code == 0
    assert "--max_unk_fraction" in capsys.readouterr().out or script != "prepare_dataset.py"
