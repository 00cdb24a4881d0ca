"""Alias of :mod:`pretraining.train.training`, kept for older imports (``from pretraining.training import pretrain``)."""

from pretraining.train.training import *  # noqa: F401,F403
