#!/usr/bin/env python
"""Reference for run_glue.py: the same fine-tuning through a plain Hugging Face script.

transformers' ``BertForSequenceClassification`` + ``Trainer``, default collator and
metrics written here, on the same data as ``run_glue.py --task_name rotten_tomatoes``
(the packaged Rotten Tomatoes split, :func:`pretraining.finetune.glue.load_rotten_tomatoes`).
Only the data split is shared with this project; tokenisation, model and training are
transformers' own. Takes the TrainingArguments flags run_glue.py takes, so the same
hyper-parameters can be passed to both::

    FLAGS="--do_train --do_eval --num_train_epochs 1 --learning_rate 1e-4 --per_device_train_batch_size 32 \\
           --weight_decay 0.01 --warmup_steps 0.06 --max_seq_length 128 --seed 42 --save_strategy no"
    python run_glue.py --model_name_or_path MINILM --task_name rotten_tomatoes --output_dir out/ours $FLAGS
    python benchmarks/bench_glue_hf.py --model_name_or_path MINILM --output_dir out/hf $FLAGS \\
        --compare_with out/ours

It writes ``all_results.json`` (eval_accuracy, train_runtime...) and, with
``--compare_with``, prints both accuracies and their difference in points.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class BenchArguments:
    """What to fine-tune and on how much data."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "BERT checkpoint folder (default: the packaged MiniLM)"})
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens"})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many training examples"})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only this many validation examples"})
    compare_with: Optional[str] = field(
        default=None, metadata={"help": "A run_glue.py --output_dir to compare eval_accuracy with"})


def main(argv=None) -> dict:
    """Fine-tune with a plain HF Trainer; returns (and writes) the results dict."""
    import numpy as np
    from transformers import (BertForSequenceClassification, BertTokenizerFast, DataCollatorWithPadding,
                              HfArgumentParser, Trainer, TrainingArguments, set_seed)

    from pretraining.finetune import glue
    from pretraining.resources import minilm_dir

    parser = HfArgumentParser((BenchArguments, TrainingArguments))
    bench, args = parser.parse_args_into_dataclasses(args=argv)
    model_dir = bench.model_name_or_path or str(minilm_dir())
    set_seed(args.seed)

    data = glue.load_rotten_tomatoes()
    train = glue.subset(data.train, bench.max_train_samples)
    validation = glue.subset(data.evals[""], bench.max_eval_samples)
    tokenizer = BertTokenizerFast.from_pretrained(model_dir)

    def encode(batch):
        return tokenizer(batch["sentence1"], truncation=True, max_length=bench.max_seq_length)

    train = train.map(encode, batched=True, remove_columns=["sentence1"])
    validation = validation.map(encode, batched=True, remove_columns=["sentence1"])
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    results = {"task_name": "rotten_tomatoes", "train_samples": len(train), "eval_samples": len(validation)}
    if args.do_train:
        results.update(trainer.train().metrics)
    results.update(trainer.evaluate())
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "all_results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"plain HF Trainer: eval_accuracy {results['eval_accuracy']:.4f}, "
          f"train_runtime {results.get('train_runtime', 0.0):.1f} s")
    if bench.compare_with:
        ours = json.loads((Path(bench.compare_with) / "all_results.json").read_text())
        diff = 100 * (ours["eval_accuracy"] - results["eval_accuracy"])
        print(f"run_glue.py:      eval_accuracy {ours['eval_accuracy']:.4f}, "
              f"train_runtime {ours.get('train_runtime', 0.0):.1f} s; difference {diff:+.2f} points")
    return results


if __name__ == "__main__":
    main()
