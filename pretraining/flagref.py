"""Flag reference (docs/FLAGS.md), generated from the argument dataclasses.

``python -m pretraining.flagref`` rewrites docs/FLAGS.md; ``--check`` exits 1 when the
file is out of date (a test runs it, so the documentation cannot drift from the code).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

# script -> the argument groups it parses, as "module:Class" (imported lazily).
SCRIPTS = {
    "prepare_dataset.py": ["pretraining.data.prepare_args:PrepareArguments"],
    "run_pretraining.py": [
        "pretraining.train.args:ModelArguments",
        "pretraining.train.args:OptimizerArguments",
        "pretraining.train.args:SchedulerArguments",
        "pretraining.train.run_args:DatasetArguments",
        "pretraining.train.run_args:EngineArguments",
        "pretraining.train.run_args:PretrainingArguments",
    ],
    "run_glue.py": [
        "pretraining.finetune.runner:GlueModelArguments",
        "pretraining.finetune.runner:GlueDataArguments",
    ],
}
GLUE_NOTE = ("run_glue.py also takes every Hugging Face `TrainingArguments` flag "
             "(`--output_dir --do_train --do_eval --do_predict --learning_rate --num_train_epochs "
             "--per_device_train_batch_size --eval_strategy/--evaluation_strategy --eval_steps --fp16 --bf16 "
             "--deepspeed ...`); `python run_glue.py --help` lists them all.")
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "docs" / "FLAGS.md"


def _load(ref: str) -> type:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    return "" if value is None else f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render() -> str:
    """The whole reference as markdown."""
    out = ["# Flag reference", "",
           "Generated from the argument dataclasses by `python -m pretraining.flagref`; "
           "do not edit by hand (a test checks it is current). Every script also accepts one "
           "`.json` file holding the same flags as an object.", ""]
    for script, refs in SCRIPTS.items():
        out += [f"## {script}", ""]
        for ref in refs:
            cls = _load(ref)
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            out += [f"### {cls.__name__}", "", doc, "", "| flag | default | meaning |", "|---|---|---|"]
            for f in dataclasses.fields(cls):
                if not f.init or f.name.startswith("_"):
                    continue
                meta = f.metadata or {}
                help_text = meta.get("help", "")
                if meta.get("choices"):
                    help_text += f" (choices: {', '.join(map(str, meta['choices']))})"
                out.append(f"| `--{f.name}` | {_default(f)} | {_cell(help_text)} |")
            out.append("")
        if script == "run_glue.py":
            out += [GLUE_NOTE, ""]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the code")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date: run `python -m pretraining.flagref`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
