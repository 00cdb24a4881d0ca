"""Pretrain BERT on HDF5 shards under a time budget (DeepSpeed or plain torch).

Examples::

    # one GPU node, 8 GPUs, DeepSpeed (see shell/adamw.sh and friends)
    deepspeed run_pretraining.py --dataset_path data/shards --output_dir runs --job_name bert-24h \\
        --optimizer_type adamw --lr 1e-3 --train_batch_size 4096 --train_micro_batch_size_per_gpu 32 \\
        --total_training_time 24 --deepspeed --fp16

    # tiny CPU run
    python run_pretraining.py --dataset_path data/shards --output_dir runs --hidden_size 128 \\
        --num_hidden_layers 2 --num_attention_heads 2 --intermediate_size 512 --train_batch_size 32 \\
        --train_micro_batch_size_per_gpu 32 --total_training_time 0.05 --print_steps 10

Every flag: ``python run_pretraining.py --help``; one JSON file of flags also works.
"""

from __future__ import annotations

from pretraining.errors import run_main


@run_main(interrupted=(
    "rerun the same command, plus --load_training_checkpoint OUTPUT_DIR/JOB_NAME to continue from the "
    "last checkpoint (during training a first Ctrl-C saves one at the next step)"))
def main(argv=None):
    """Parse the flags (or one JSON file of them) and pretrain; returns the run's end record.

    A run that did not finish its job exits non-zero (:func:`pretraining.train.progress.exit_code`): 1 when it stopped on a
    non-finite loss, 130/143 when interrupted by SIGINT/SIGTERM (after saving a checkpoint), 2 for a UserError."""
    from pretraining.train.progress import exit_code
    from pretraining.train.training import PretrainingConfig, pretrain

    end = pretrain(PretrainingConfig.parse(argv)).end
    code = exit_code(end)
    if code:
        raise SystemExit(code)
    return end


if __name__ == "__main__":
    main()
