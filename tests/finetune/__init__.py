"""Tests of pretraining/finetune/: run_glue, GLUE, distillation."""
