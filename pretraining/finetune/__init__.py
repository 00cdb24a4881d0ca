"""Fine-tuning: run_glue's runner (runner.py), distillation, and the GLUE tasks (glue/). May import model/, checkpoints/, data/ and the root helpers; never train/ or report/."""
