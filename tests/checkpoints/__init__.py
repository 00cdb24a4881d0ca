"""Tests of pretraining/checkpoints/: layouts, exports, checkpoints."""
