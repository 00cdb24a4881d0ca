"""``python -m pretraining.convert SRC OUT [--to academic-budget-bert]``: convert a BERT checkpoint folder between
layouts (:mod:`pretraining.checkpoints.layouts`): to stock transformers' (what :func:`pretraining.checkpoints.export.export_pretrained` writes)
or to IntelLabs' academic-budget-bert layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pretraining.atomic import remove, swap_folder, write_guard
from pretraining.errors import UserError, run_main
from pretraining.checkpoints.layouts import ACADEMIC, LAYOUTS, check_loading, unreadable_weights
from pretraining.outputs import check_output_folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pretraining.convert",
        description="Convert a BERT checkpoint folder (any layout this tool reads: "
                    f"{', '.join(LAYOUTS)}) to stock transformers' layout or to academic-budget-bert's.")
    parser.add_argument("source", help="checkpoint folder (a run's pretrained/, an export, an epoch*_step* folder)")
    parser.add_argument("output", help="folder to write (created; refused when it is not empty, or is the source)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output folder (swapped in only once the new one is complete)")
    parser.add_argument("--to", choices=["transformers", ACADEMIC], default="transformers",
                        help="transformers: the stock layout export_pretrained writes (default); academic-budget-bert: "
                             "pytorch_model.bin with their key names, their config.json and args.json, for their "
                             "run_glue.py and run_pretraining.py --model_name_or_path")
    return parser


@run_main
def main(argv=None) -> Path:
    """Convert ``source`` into ``output``; returns the output folder."""
    from pretraining.data.tokenization import has_tokenizer_files, open_tokenizer
    from pretraining.checkpoints.export import academic_files, export_pretrained
    from pretraining.model.modeling import BertForPreTraining

    args = _parser().parse_args(argv)
    source = Path(args.source)
    if not (source / "config.json").is_file():
        raise UserError(f"{source} is not a checkpoint folder (no config.json)")
    out = check_output_folder(args.output, flag="output", inputs=[source], empty=not args.overwrite,
                              overwrite_flag="--overwrite")
    try:
        model, info = BertForPreTraining.from_pretrained(str(source), output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - classified below; anything else is re-raised as it was
        if isinstance(exc, UserError) or not unreadable_weights(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the weights in {source} cannot be read ({type(exc).__name__}: {first[:200]}): the file is "
                        "damaged, truncated or not a checkpoint; export or copy it again") from None
    check_loading(info["missing_keys"], info["unexpected_keys"], str(source))
    tokenizer = open_tokenizer(str(source), f"fix or remove the tokenizer files in {source}") \
        if has_tokenizer_files(source) else None
    tmp = out.with_name(f".tmp-{out.name}")  # written whole, then swapped in: never a half-converted folder
    remove(tmp)
    with write_guard(out, tmp):
        if args.to == "transformers":
            export_pretrained(model, tokenizer, tmp)
        else:
            run_args = source.parent / "args.json"
            recorded = json.loads(run_args.read_text()) if run_args.is_file() else {}
            their_config, tensors, their_args = academic_files(model, recorded)
            tmp.mkdir(parents=True)
            torch.save(tensors, tmp / "pytorch_model.bin")
            (tmp / "config.json").write_text(json.dumps(their_config, indent=2) + "\n")
            (tmp / "args.json").write_text(json.dumps(their_args, indent=2, default=str) + "\n")
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
    swap_folder(tmp, out, out.with_name(f".old-{out.name}"))
    print(f"wrote {out} ({args.to} layout)")
    return out


if __name__ == "__main__":
    main()
