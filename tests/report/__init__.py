"""Tests of pretraining/report/: run folders, the table, the study, the demo."""
