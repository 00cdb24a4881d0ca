"""Alias of :mod:`pretraining.report.study`, kept so ``python -m pretraining.study`` (and older imports) keep working."""

from pretraining.report.study import *  # noqa: F401,F403
from pretraining.report.study import main  # noqa: F401

if __name__ == "__main__":
    main()
