"""Alias of :mod:`pretraining.report.demo`, kept so ``python -m pretraining.demo`` (and older imports) keep working."""

from pretraining.report.demo import *  # noqa: F401,F403
from pretraining.report.demo import main  # noqa: F401

if __name__ == "__main__":
    main()
