"""``python -m pretraining.report``: :func:`pretraining.report.table.main`."""

from pretraining.report.table import main

main()
