"""Alias of :mod:`pretraining.checkpoints.convert`, kept so ``python -m pretraining.convert`` (and older imports) keep working."""

from pretraining.checkpoints.convert import *  # noqa: F401,F403
from pretraining.checkpoints.convert import main  # noqa: F401

if __name__ == "__main__":
    main()
