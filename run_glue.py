#!/usr/bin/env python
"""Fine-tune and evaluate a BERT checkpoint on a GLUE task, a local task or rotten_tomatoes.

    python run_glue.py --model_name_or_path OUTPUT/JOB/pretrained --task_name mrpc \\
        --do_train --do_eval --output_dir /tmp/mrpc
    python run_glue.py args.json          # the same flags as a JSON object

Flags are Hugging Face's TrainingArguments plus the data/model/distillation groups in
pretraining/finetune.py; ``--help`` lists them all.
"""

from __future__ import annotations

import logging

from pretraining.cli import parse_args
from pretraining.errors import UserError, run_main
from pretraining.finetune.runner import GlueDataArguments, GlueModelArguments, GlueTrainingArguments, finetune


@run_main(interrupted="nothing of this run was exported; rerun the same command")
def main(argv=None) -> dict:
    """Parse ``argv`` (default: sys.argv[1:]) and run :func:`pretraining.finetune.runner.finetune`."""
    try:
        model_args, data_args, training_args = parse_args(
            (GlueModelArguments, GlueDataArguments, GlueTrainingArguments), argv)
    except ValueError as exc:  # TrainingArguments' own checks (e.g. --fp16 without a GPU)
        raise UserError(str(exc)) from None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    results = finetune(model_args, data_args, training_args)
    print({k: v for k, v in results.items() if k.startswith("eval_") or k in ("task_name", "train_loss")})
    return results


if __name__ == "__main__":
    main()
