"""Tests of pretraining/data/: corpus to shards to batches."""
