"""Tests of pretraining/model/: the network."""
