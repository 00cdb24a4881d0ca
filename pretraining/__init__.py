"""Budget BERT pretraining and GLUE fine-tuning (academic-budget-bert compatible)."""

__version__ = "0.1.0"
