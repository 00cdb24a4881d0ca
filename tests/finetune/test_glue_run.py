"""run_glue.py end to end on real data: MiniLM learns rotten_tomatoes, tiny project exports
(pre-ln and post-ln) fine-tune, sentence pairs (MRPC-shaped TSV), regression, predictions,
distillation through the CLI, finetune.sh, and clear errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import run_glue
from pretraining.finetune import glue
from pretraining.resources import pang_lee_polarity

ROOT = Path(__file__).resolve().parents[2]
# Small and quick: a few dozen steps of a 2-layer model.
TINY = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32", "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--max_seq_length", "32", "--save_strategy", "no", "--disable_tqdm", "true",
        "--report_to", "none", "--seed", "0"]


def _run(*argv) -> dict:
    return run_glue.main([str(a) for a in argv])


def _polarity_sentences() -> list[tuple[str, int]]:
    lines = pang_lee_polarity().read_bytes().decode("latin-1").splitlines()
    return [(line.split(" ", 1)[1].strip(), int(line.startswith("__label__pos"))) for line in lines if line.strip()]


@pytest.mark.slow
def test_minilm_beats_majority_on_rotten_tomatoes(minilm_dir, tmp_path):
    results = _run("--model_name_or_path", minilm_dir, "--task_name", "rotten_tomatoes", "--output_dir", tmp_path,
                   "--do_train", "--do_eval", "--max_train_samples", 320, "--max_eval_samples", 200,
                   "--max_seq_length", 64, "--per_device_train_batch_size", 16, "--learning_rate", 2e-4,
                   "--num_train_epochs", 2, "--save_strategy", "no", "--disable_tqdm", "true", "--seed", 42)
    labels = np.array(glue.subset(glue.load_rotten_tomatoes().evals[""], 200)["label"])
    majority = max(labels.mean(), 1 - labels.mean())
    assert results["eval_accuracy"] > majority + 0.05, (results["eval_accuracy"], majority)
    assert results["eval_loss"] < math.log(2)
    on_disk = json.loads((tmp_path / "all_results.json").read_text())
    assert on_disk == pytest.approx(results)
    for key in ("task_name", "eval_loss", "eval_accuracy", "eval_f1", "train_loss", "train_runtime", "epoch",
                "train_samples", "eval_samples"):
        assert key in on_disk, key
    assert on_disk["train_samples"] == 320 and on_disk["eval_samples"] == 200 and on_disk["epoch"] == 2
    assert json.loads((tmp_path / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pre-ln", "post-ln"])
def test_tiny_export_finetunes_end_to_end(tiny_exports, tmp_path, mode):
    test_file = tmp_path / "test.csv"
    test_file.write_text("text\nan utterly charming film\n\"a tedious, joyless slog\"\nfine\n")
    out = tmp_path / "out"
    results = _run("--model_name_or_path", tiny_exports[mode], "--task_name", "rotten_tomatoes", "--output_dir", out,
                   "--do_train", "--do_eval", "--do_predict", "--test_file", test_file, "--text_columns", "text",
                   "--max_train_samples", 96, "--max_eval_samples", 48, *TINY)
    assert results["task_name"] == "rotten_tomatoes" and math.isfinite(results["train_loss"])
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["train_samples"] == 96
    lines = (out / "predict_results_rotten_tomatoes.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 4
    assert {line.split("\t")[1] for line in lines[1:]} <= {"rotten", "fresh"}
    model, missing = glue.load_model_for_task(str(out), 2, "single_label_classification")
    assert not missing and model.config.encoder_ln_mode == mode
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    # written once, in the stock layout: one weights file, the arguments as Trainer.save_model writes them
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert (out / "training_args.bin").stat().st_size > 0


def _mrpc_tsv(path: Path, pairs, header="Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"):
    rows = [header] + [f"{label}\t{i}\t{i + 1000}\t{a}\t{b}" for i, (a, b, label) in enumerate(pairs)]
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_sentence_pairs_from_mrpc_shaped_tsv(tiny_exports, bert_tokenizer, tmp_path):
    sentences = [s for s, _ in _polarity_sentences()]
    rng = np.random.default_rng(0)
    pairs = [(s, s, 1) if i % 2 else (s, sentences[(i * 7 + 3) % len(sentences)], 0) for i, s in enumerate(sentences)]
    rng.shuffle(pairs)
    _mrpc_tsv(tmp_path / "train.tsv", pairs[:120])
    _mrpc_tsv(tmp_path / "dev.tsv", pairs[120:170])
    _mrpc_tsv(tmp_path / "test.tsv", pairs[170:180], header="index\t#1 ID\t#2 ID\t#1 String\t#2 String")
    data = glue.load_local_files({"train": tmp_path / "train.tsv"}, glue.TASKS["mrpc"])
    encoded = glue.tokenize_splits(data, bert_tokenizer, 32).train[0]
    sep = bert_tokenizer.sep_token_id
    first_sep = encoded["input_ids"].index(sep)
    assert encoded["token_type_ids"][:first_sep + 1] == [0] * (first_sep + 1)
    assert set(encoded["token_type_ids"][first_sep + 1:]) == {1} and encoded["input_ids"][-1] == sep

    out = tmp_path / "out"
    results = _run("--model_name_or_path", tiny_exports["post-ln"], "--task_name", "mrpc", "--output_dir", out,
                   "--train_file", tmp_path / "train.tsv", "--validation_file", tmp_path / "dev.tsv",
                   "--test_file", tmp_path / "test.tsv", "--do_train", "--do_eval", "--do_predict", *TINY)
    assert {"eval_accuracy", "eval_f1", "eval_combined_score"} <= results.keys()
    assert results["train_samples"] == 120 and results["eval_samples"] == 50
    lines = (out / "predict_results_mrpc.tsv").read_text().splitlines()
    assert len(lines) == 11 and {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}


@pytest.mark.slow
def test_regression_local_task(tiny_exports, tmp_path):
    rows = [(s, float(len(s.split()) % 5) + 0.5) for s, _ in _polarity_sentences()[:80]]
    frame = pd.DataFrame({"sentence1": [s for s, _ in rows], "sentence2": [s[::-1] for s, _ in rows],
                          "score": [y for _, y in rows]})
    frame.to_csv(tmp_path / "sts.csv", index=False)
    results = _run("--model_name_or_path", tiny_exports["pre-ln"], "--train_file", tmp_path / "sts.csv",
                   "--validation_file", tmp_path / "sts.csv", "--label_column", "score", "--output_dir",
                   tmp_path / "out", "--do_train", "--do_eval", *TINY)
    assert results["task_name"] == "local"
    assert {"eval_pearson", "eval_spearmanr", "eval_mse"} <= results.keys()
    assert -1.0 <= results["eval_pearson"] <= 1.0 and results["eval_mse"] >= 0.0


@pytest.mark.slow
def test_distillation_through_the_cli(tiny_exports, tmp_path):
    common = ["--task_name", "rotten_tomatoes", "--do_train", "--do_eval", "--max_train_samples", 64,
              "--max_eval_samples", 32, *TINY]
    _run("--model_name_or_path", tiny_exports["post-ln"], "--output_dir", tmp_path / "teacher", *common)
    results = _run("--model_name_or_path", tiny_exports["pre-ln"], "--output_dir", tmp_path / "student",
                   "--teacher_model_name_or_path", tmp_path / "teacher", "--distill_alpha", 0.5,
                   "--distill_temperature", 2.0, *common)
    assert math.isfinite(results["train_loss"]) and "eval_accuracy" in results


@pytest.mark.slow
def test_clear_errors(tiny_exports, minilm_dir, tmp_path, capsys):
    from pretraining.model.modeling import BertConfig, BertForSequenceClassification

    small = tmp_path / "small-vocab"
    BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(small)
    cases = [
        (["--model_name_or_path", small, "--tokenizer_name", minilm_dir, "--task_name", "rotten_tomatoes"],
         "30522 tokens but"),
        (["--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes",
          "--teacher_model_name_or_path", tiny_exports["post-ln"]], "has no fine-tuned classification head"),
        (["--model_name_or_path", tmp_path, "--task_name", "rotten_tomatoes"], "no config.json"),
        (["--model_name_or_path", small, "--task_name", "rotten_tomatoes", "--do_predict"], "--do_predict: task "
                                                                                           "rotten_tomatoes has no test"),
        (["--model_name_or_path", small, "--task_name", "squad", "--max_seq_length", "0"], "invalid arguments (2)"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _run(*argv, "--output_dir", tmp_path / "out", "--do_train", "--max_train_samples", 8, "--report_to",
                 "none")
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err


@pytest.mark.slow
def test_finetune_sh_runs_and_prints_a_table(tiny_exports, tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "ft"), "EPOCHS": "1", "EVAL_STEPS": "1000", "MAX_SEQ_LENGTH": "32",
           "BATCH_SIZE": "16", "WARMUP_STEPS": "0", "LR": "1e-3"}
    proc = subprocess.run(["bash", str(ROOT / "shell" / "finetune.sh"), str(tiny_exports["post-ln"]), "rotten_tomatoes",
                           "--max_train_samples", "32", "--max_eval_samples", "16", "--disable_tqdm", "true"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "rotten_tomatoes" / "all_results.json").read_text())
    assert results["train_samples"] == 32 and results["epoch"] == 1
    assert "| rotten_tomatoes | accuracy " in proc.stdout
    args = json.loads((tmp_path / "ft" / "rotten_tomatoes" / "train_results.json").read_text())
    assert args["train_samples"] == 32


@pytest.mark.slow
def test_seeds_run_once_each_and_summarise(tiny_exports, tmp_path):
    out = tmp_path / "seeds"
    results = _run("--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes", "--output_dir", out,
                   "--do_train", "--do_eval", "--max_train_samples", 64, "--max_eval_samples", 48,
                   *[a for a in TINY if a not in ("--seed", "0")], "--seeds", 3, 4, 5)
    per_seed = [json.loads((out / f"seed_{s}" / "all_results.json").read_text()) for s in (3, 4, 5)]
    accuracies = [r["eval_accuracy"] for r in per_seed]
    assert results["seeds"] == [3, 4, 5] and results["eval_accuracy_per_seed"] == accuracies
    assert results["eval_accuracy"] == pytest.approx(np.mean(accuracies))
    assert results["eval_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert len({r["train_loss"] for r in per_seed}) == 3  # the seed changes the run (head init, order, dropout)
    assert json.loads((out / "all_results.json").read_text()) == results
    with pytest.raises(SystemExit):
        _run("--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes", "--output_dir", out,
             "--do_eval", "--seeds", 1, 1)


@pytest.mark.slow
def test_finetune_sh_seeds(tiny_exports, tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "ft"), "EPOCHS": "1", "EVAL_STEPS": "1000", "MAX_SEQ_LENGTH": "32",
           "BATCH_SIZE": "16", "WARMUP_STEPS": "0", "LR": "1e-3", "SEEDS": "1 2"}
    proc = subprocess.run(["bash", str(ROOT / "shell" / "finetune.sh"), str(tiny_exports["post-ln"]), "rotten_tomatoes",
                           "--max_train_samples", "32", "--max_eval_samples", "16", "--disable_tqdm", "true"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "ft" / "rotten_tomatoes" / "all_results.json").read_text())
    assert results["seeds"] == [1, 2] and "eval_accuracy_std" in results
    assert (tmp_path / "ft" / "rotten_tomatoes" / "seed_2" / "eval_results.json").is_file()
    assert f"accuracy {results['eval_accuracy']:.4f} ± {results['eval_accuracy_std']:.4f}" in proc.stdout


def _rte_dir(glue_dir: Path) -> None:
    """RTE in glue_data's layout: train/dev with index, sentence1, sentence2, label (strings); test without label."""
    rte = glue_dir / "RTE"
    rte.mkdir(parents=True)
    rows = [(f"the river {i} flows north", f"a river {i} flows", "entailment") if i % 2 else
            (f"the river {i} flows north", f"no river is near town {i}", "not_entailment") for i in range(40)]
    for name, part in (("train.tsv", rows[:28]), ("dev.tsv", rows[28:])):
        (rte / name).write_text("index\tsentence1\tsentence2\tlabel\n" +
                                "".join(f"{i}\t{a}\t{b}\t{c}\n" for i, (a, b, c) in enumerate(part)))
    (rte / "test.tsv").write_text("index\tsentence1\tsentence2\n" +
                                  "".join(f"{i}\t{a}\t{b}\n" for i, (a, b, _) in enumerate(rows[:6])))


@pytest.mark.slow
def test_finetune_sh_runs_a_glue_dir_and_marks_a_failed_task(tiny_exports, tmp_path):
    """Two tasks from GLUE_DIR: rte is there, mrpc is not. The table shows rte's numbers and marks mrpc FAILED,
    never the numbers an earlier mrpc run left in its folder; the call exits 1."""
    _rte_dir(tmp_path / "glue_data")
    stale = tmp_path / "ft" / "mrpc"
    stale.mkdir(parents=True)
    (stale / "all_results.json").write_text(json.dumps({"task_name": "mrpc", "eval_accuracy": 0.9999}))
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "ft"), "EPOCHS": "1", "EVAL_STEPS": "1000", "MAX_SEQ_LENGTH": "32",
           "BATCH_SIZE": "16", "WARMUP_STEPS": "0", "LR": "1e-3", "GLUE_DIR": str(tmp_path / "glue_data"),
           "TASKS": "rte mrpc"}
    proc = subprocess.run(["bash", str(ROOT / "shell" / "finetune.sh"), str(tiny_exports["post-ln"]),
                           "--disable_tqdm", "true"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "| mrpc | FAILED" in proc.stdout and "0.9999" not in proc.stdout
    assert "| rte | accuracy " in proc.stdout and "failed: mrpc" in proc.stderr
    assert "has no MRPC/ folder for mrpc" in proc.stderr
    predictions = (tmp_path / "ft" / "rte" / "predict_results_rte.tsv").read_text().splitlines()
    assert len(predictions) == 7 and {p.split("\t")[1] for p in predictions[1:]} <= {"entailment", "not_entailment"}


@pytest.mark.slow
def test_a_later_run_into_the_same_folder_keeps_the_earlier_results(tiny_exports, tmp_path, capsys):
    """Train + eval, then predict only from the fine-tuned model into the same folder: all_results.json keeps the
    train and eval figures (it was rewritten as {"task_name": ...}); a second predict run is refused, not replacing
    the first's predictions, unless --overwrite_output_dir."""
    test_file = tmp_path / "test.csv"
    test_file.write_text("index,text\n7,an utterly charming film\n9,a tedious slog\n")
    out = tmp_path / "out"
    first = _run("--model_name_or_path", tiny_exports["post-ln"], "--task_name", "rotten_tomatoes", "--output_dir",
                 out, "--do_train", "--do_eval", "--max_train_samples", 64, "--max_eval_samples", 32, *TINY)
    predict = ["--model_name_or_path", out, "--task_name", "rotten_tomatoes", "--output_dir", out, "--do_predict",
               "--test_file", test_file, "--text_columns", "text", *TINY]
    _run(*predict)
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == first["eval_accuracy"] and results["train_loss"] == first["train_loss"]
    predictions = (out / "predict_results_rotten_tomatoes.tsv").read_text()
    assert [line.split("\t")[0] for line in predictions.splitlines()] == ["index", "7", "9"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        _run(*predict)
    assert refused.value.code == 2
    assert "holds predictions of an earlier run (predict_results_rotten_tomatoes.tsv)" in capsys.readouterr().err
    assert (out / "predict_results_rotten_tomatoes.tsv").read_text() == predictions
    _run(*predict, "--overwrite_output_dir")


MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
MNLI_LABELS = ("entailment", "neutral", "contradiction")


def _mnli_file(path: Path, rows: int, first_index: int, kind: str) -> None:
    """A file in MNLI's own glue_data layout: train 12 columns (label1, gold_label), dev 16 (label1-5, gold_label),
    test 10 (no labels); parse columns with parentheses, as GLUE ships them."""
    extra = {"train": ["label1", "gold_label"], "dev": [f"label{i}" for i in range(1, 6)] + ["gold_label"],
             "test": []}[kind]
    lines = ["\t".join(MNLI_COLUMNS + extra)]
    for i in range(rows):
        label = MNLI_LABELS[i % 3]
        premise = f"the {['cat', 'dog', 'bird'][i % 3]} sat on mat number {i}"
        hypothesis = [premise, f"a pet rested somewhere {i}", f"no animal was ever near mat {i}"][i % 3]
        lines.append("\t".join([str(first_index + i), str(i), f"{i}e", "fiction", f"( ( {premise} ) )",
                                f"( ( {hypothesis} ) )", f"(ROOT (S {premise}))", f"(ROOT (S {hypothesis}))", premise,
                                hypothesis] + [label] * len(extra)))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_mnli_from_a_glue_dir_evaluates_and_predicts_matched_and_mismatched(tiny_exports, tmp_path):
    mnli = tmp_path / "glue_data" / "MNLI"
    mnli.mkdir(parents=True)
    _mnli_file(mnli / "train.tsv", 48, 0, "train")
    _mnli_file(mnli / "dev_matched.tsv", 12, 100, "dev")
    _mnli_file(mnli / "dev_mismatched.tsv", 9, 200, "dev")
    _mnli_file(mnli / "test_matched.tsv", 5, 300, "test")
    _mnli_file(mnli / "test_mismatched.tsv", 4, 400, "test")
    out = tmp_path / "out"
    results = _run("--model_name_or_path", tiny_exports["post-ln"], "--task_name", "mnli", "--glue_dir",
                   tmp_path / "glue_data", "--output_dir", out, "--do_train", "--do_eval", "--do_predict", *TINY)
    assert results["train_samples"] == 48 and results["eval_samples"] == 12 and results["eval_samples_mm"] == 9
    assert 0 <= results["eval_accuracy"] <= 1 and 0 <= results["eval_accuracy_mm"] <= 1
    for tag, first, rows in (("mnli", 300, 5), ("mnli-mm", 400, 4)):
        lines = (out / f"predict_results_{tag}.tsv").read_text().splitlines()
        assert [line.split("\t")[0] for line in lines] == ["index", *map(str, range(first, first + rows))]
        assert {line.split("\t")[1] for line in lines[1:]} <= set(MNLI_LABELS)
        server = "MNLI-m" if tag == "mnli" else "MNLI-mm"  # the GLUE server's name, same content
        assert (out / f"{server}.tsv").read_text() == "\n".join(lines) + "\n"
    assert results["pretrained_model"] == str(Path(tiny_exports["post-ln"]).resolve())

    # AX: the MNLI model predicts the diagnostic set (glue_data/diagnostic/diagnostic.tsv: index, sentence1, sentence2)
    diagnostic = tmp_path / "glue_data" / "diagnostic"
    diagnostic.mkdir()
    (diagnostic / "diagnostic.tsv").write_text("index\tsentence1\tsentence2\n0\tThe cat sat.\tA cat sat.\n"
                                               "1\tNo dog barked.\tA dog barked.\n")
    ax = _run("--model_name_or_path", out, "--task_name", "ax", "--glue_dir", tmp_path / "glue_data", "--output_dir",
              tmp_path / "ax", "--do_predict", *TINY)
    assert ax["pretrained_model"] == results["pretrained_model"]  # the root model, through MNLI's folder
    lines = (tmp_path / "ax" / "AX.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 3 and {x.split("\t")[1] for x in lines[1:]} <= set(MNLI_LABELS)


def test_a_glue_dir_without_the_tasks_folder_is_one_clear_error(tiny_exports, tmp_path, capsys):
    (tmp_path / "glue_data").mkdir()
    with pytest.raises(SystemExit):
        _run("--model_name_or_path", tiny_exports["post-ln"], "--task_name", "rte", "--glue_dir",
             tmp_path / "glue_data", "--output_dir", tmp_path / "out", "--do_train", *TINY)
    assert "has no RTE/ folder for rte: give the glue_data/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_learning_rate_chosen_on_a_dev_split_carved_from_the_training_examples(tiny_exports, tmp_path):
    """--learning_rate_grid: one run per value on 80% of the training examples, scored on the other 20% (never on
    the validation split), then the seeds with the winner on all training examples."""
    out = tmp_path / "grid"
    results = _run("--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes", "--output_dir", out,
                   "--do_train", "--do_eval", "--max_train_samples", 80, "--max_eval_samples", 40,
                   *[a for a in TINY if a not in ("--seed", "0")], "--seeds", 1, 2,
                   "--learning_rate_grid", "1e-9", "3e-3")
    selection = results["lr_selection"]
    assert selection["metric"] == "accuracy" and selection["dev_samples"] == 16 and selection["seed"] == 1
    dev_runs = {lr: json.loads((out / "lr_selection" / f"lr_{lr}" / "all_results.json").read_text())
                for lr in ("1e-09", "0.003")}
    assert all(r["eval_samples"] == 16 and r["train_samples"] == 64 for r in dev_runs.values())
    assert selection["scores"] == {"1e-09": dev_runs["1e-09"]["eval_accuracy"],
                                   "0.003": dev_runs["0.003"]["eval_accuracy"]}
    best = max(selection["scores"], key=selection["scores"].get)
    assert results["learning_rate"] == float(best)
    for seed in (1, 2):  # the final runs: all 80 training examples, the chosen LR, the validation split
        final = json.loads((out / f"seed_{seed}" / "all_results.json").read_text())
        assert final["train_samples"] == 80 and final["eval_samples"] == 40
        assert final["learning_rate"] == float(best)
    one = tmp_path / "one_seed"  # one seed: its all_results.json (written once) records the choice too
    _run("--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes", "--output_dir", one,
         "--do_train", "--do_eval", "--max_train_samples", 40, "--max_eval_samples", 20, *TINY,
         "--learning_rate_grid", "3e-3")
    written = json.loads((one / "all_results.json").read_text())
    assert written["learning_rate"] == 3e-3 and written["lr_selection"]["scores"].keys() == {"0.003"}
    assert written["train_samples"] == 40 and written["eval_samples"] == 20
    with pytest.raises(SystemExit):
        _run("--model_name_or_path", tiny_exports["pre-ln"], "--task_name", "rotten_tomatoes", "--output_dir",
             tmp_path / "bad", "--do_train", "--learning_rate_grid", "0", "1e-3")
