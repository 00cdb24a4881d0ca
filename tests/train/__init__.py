"""Tests of pretraining/train/: pretraining: flags, loop, engines, optimizers, schedules, faults."""
