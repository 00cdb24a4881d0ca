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


@run_main
def main(argv=None):
    """Parse the flags (or one JSON file of them) and pretrain; returns the run's end record."""
    from pretraining.training import PretrainingConfig, pretrain

    return pretrain(PretrainingConfig.parse(argv)).end


if __name__ == "__main__":
    main()
