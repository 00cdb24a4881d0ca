"""GLUE task table, metrics, data loading (local files, GLUE TSVs, rotten_tomatoes) and arguments.

No training here: these run in a second or two.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pretraining.finetune import glue
from pretraining.errors import UserError


# --- metrics -----------------------------------------------------------------------

def _ref_f1(preds, labels):
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    return 2 * tp / (2 * tp + fp + fn)


def _ref_mcc(preds, labels):
    tp = np.sum((preds == 1) & (labels == 1))
    tn = np.sum((preds == 0) & (labels == 0))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    return (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def _ranks(x):
    return np.argsort(np.argsort(x)).astype(float)


REFERENCES = {
    "accuracy": lambda p, y: np.mean(p == y),
    "f1": _ref_f1,
    "matthews_correlation": _ref_mcc,
    "pearson": lambda p, y: np.corrcoef(p, y)[0, 1],
    "spearmanr": lambda p, y: np.corrcoef(_ranks(p), _ranks(y))[0, 1],
    "mse": lambda p, y: np.mean((p - y) ** 2),
}


@pytest.mark.parametrize("name", list(glue.TASKS))
def test_every_task_builds_its_metrics(name):
    task = glue.TASKS[name]
    rng = np.random.default_rng(1)
    if task.is_regression:
        labels = rng.uniform(0, 5, 64)
        logits = (labels + rng.normal(0, 1.0, 64))[:, None]
        preds = logits[:, 0]
    else:
        labels = rng.integers(0, task.num_labels, 64)
        logits = rng.normal(size=(64, task.num_labels))
        logits[np.arange(64), labels] += rng.uniform(0, 1.5, 64)  # better than chance, not perfect
        preds = logits.argmax(-1)
    result = glue.compute_metrics(task, logits, labels)
    expected = {m: REFERENCES[m](preds, labels) for m in task.metrics}
    if len(expected) > 1:
        expected["combined_score"] = np.mean(list(expected.values()))
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
    assert task.main_metric in task.metrics


def test_metrics_by_hand():
    # preds 1,1,0,0 vs labels 1,0,0,0: tp=1 fp=1 tn=2 fn=0
    logits = np.array([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0], [1.0, 0.0]])
    result = glue.compute_metrics(glue.TASKS["mrpc"], logits, np.array([1, 0, 0, 0]))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["combined_score"] == pytest.approx((0.75 + 2 / 3) / 2)
    cola = glue.compute_metrics(glue.TASKS["cola"], logits, np.array([1, 0, 0, 0]))
    assert cola["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    stsb = glue.compute_metrics(glue.TASKS["stsb"], np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.5]))
    assert stsb["spearmanr"] == pytest.approx(1.0)
    assert stsb["pearson"] == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1])


def test_task_table_shapes():
    assert set(glue.GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "ax"}
    assert glue.TASKS["ax"].evals == () and glue.TASKS["ax"].label_names == glue.TASKS["mnli"].label_names
    assert glue.TASKS["stsb"].is_regression and glue.TASKS["stsb"].num_labels == 1
    assert glue.TASKS["mnli"].num_labels == 3 and [s for s, _ in glue.TASKS["mnli"].evals] == ["", "_mm"]
    assert glue.TASKS["mrpc"].pair and not glue.TASKS["sst2"].pair
    assert glue.TASKS["mrpc"].main_metric == "f1" and glue.TASKS["cola"].main_metric == "matthews_correlation"
    assert glue.get_task("MRPC") is glue.TASKS["mrpc"] and glue.get_task("SST-2") is glue.TASKS["sst2"]
    with pytest.raises(UserError, match="valid: cola, sst2"):
        glue.get_task("squad")


# --- rotten_tomatoes -------------------------------------------------------------------

@pytest.fixture(scope="module")
def rotten():
    return glue.load_rotten_tomatoes()


def test_rotten_tomatoes_split(rotten):
    from pretraining.resources import rotten_tomatoes_csv

    raw = pd.read_csv(rotten_tomatoes_csv())
    reviews = raw[raw["category"] != "plot"].drop_duplicates("text")
    train, validation = rotten.train, rotten.evals[""]
    assert len(train) + len(validation) == len(reviews) and len(validation) == round(0.1 * len(reviews))
    assert not set(train["sentence1"]) & set(validation["sentence1"])
    texts = list(train["sentence1"]) + list(validation["sentence1"])
    labels = list(train["label"]) + list(validation["label"])
    assert np.mean(labels) == pytest.approx((reviews["category"] == "fresh").mean())
    assert 0.55 < np.mean(labels) < 0.60  # majority class ~58%
    by_text = dict(zip(texts, labels))
    for text, category in reviews[["text", "category"]].head(50).itertuples(index=False):
        assert by_text[text] == (category == "fresh")
    assert list(glue.load_rotten_tomatoes().evals[""]["sentence1"]) == list(validation["sentence1"])
    assert rotten.task.label_names == ("rotten", "fresh") and not rotten.tests


def test_subset_is_deterministic_and_random(rotten):
    np.random.seed(123)
    first = glue.subset(rotten.train, 200)
    np.random.seed(7)
    second = glue.subset(rotten.train, 200)
    assert list(first["sentence1"]) == list(second["sentence1"]) and len(first) == 200
    assert list(first["sentence1"]) != list(rotten.train.select(range(200))["sentence1"])
    assert 0.4 < np.mean(list(first["label"])) < 0.75
    head = glue.subset(rotten.train, 5, shuffle=False)
    assert list(head["sentence1"]) == list(rotten.train["sentence1"])[:5]
    assert glue.subset(rotten.train, None) is rotten.train


# --- local files ----------------------------------------------------------------------

ROWS = [("a gripping, beautiful film", "pos"), ("dull and far too long", "neg"), ("I loved it", "pos"),
        ("a mess from start to finish", "neg"), ("tender, funny, \"wise\"", "pos")]


def _write_all_formats(tmp_path):
    frame = pd.DataFrame(ROWS, columns=["text", "label"])
    frame.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in ROWS))  # raw quotes, as GLUE's
    (tmp_path / "d.json").write_text(frame.to_json(orient="records"))
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write(frame.to_json(orient="records", lines=True))
    return ["d.csv", "d.tsv", "d.json", "d.jsonl", "d.jsonl.gz"]


def test_local_formats_agree(tmp_path):
    for name in _write_all_formats(tmp_path):
        data = glue.load_local_files({"train": tmp_path / name, "validation": tmp_path / name})
        assert data.task.label_names == ("neg", "pos"), name
        assert data.task.metrics == ("accuracy", "f1") and not data.task.pair
        assert list(data.train["sentence1"]) == [t for t, _ in ROWS], name
        assert list(data.train["label"]) == [1, 0, 1, 0, 1], name
        assert list(data.evals[""]["label"]) == list(data.train["label"])


def test_local_numeric_labels_and_regression(tmp_path):
    pd.DataFrame({"q1": ["a", "b", "c"], "q2": ["x", "y", "z"], "stars": [5, 3, 4]}).to_csv(tmp_path / "c.csv", index=False)
    data = glue.load_local_files({"train": tmp_path / "c.csv"}, text_columns=["q1", "q2"], label_column="stars")
    assert data.task.label_names == ("3", "4", "5") and data.task.pair
    assert list(data.train["label"]) == [2, 0, 1] and list(data.train["sentence2"]) == ["x", "y", "z"]
    pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.5, 4.25]}).to_csv(tmp_path / "r.csv", index=False)
    reg = glue.load_local_files({"train": tmp_path / "r.csv"})
    assert reg.task.is_regression and reg.task.metrics == ("pearson", "spearmanr", "mse")
    assert list(reg.train["label"]) == [0.5, 4.25]


MRPC_TSV = (
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    "1\t702876\t702977\tAmrozi accused his brother , whom he called \" the witness \" , of deliberately distorting "
    "his evidence .\tReferring to him as only \" the witness \" , Amrozi accused his brother of deliberately "
    "distorting his evidence .\n"
    "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 billion ."
    "\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 .\n"
)


def test_glue_mrpc_tsv_with_quotes(tmp_path):
    (tmp_path / "train.tsv").write_text(MRPC_TSV)
    (tmp_path / "test.tsv").write_text(MRPC_TSV.replace("Quality\t", "index\t"))
    data = glue.load_local_files({"train": tmp_path / "train.tsv", "test": tmp_path / "test.tsv"}, glue.TASKS["mrpc"])
    assert list(data.train["label"]) == [1, 0]
    assert list(data.train["sentence1"])[0].startswith("Amrozi accused his brother , whom he called \" the witness \"")
    assert list(data.train["sentence2"])[1].endswith("in 1998 .")
    assert list(data.tests) == ["mrpc"] and data.tests["mrpc"].column_names == ["sentence1", "sentence2", "idx"]
    assert list(data.tests["mrpc"]["idx"]) == ["1", "0"]  # the test file's own index column, kept for predictions


def test_hub_parquet_and_mrpcs_raw_test_file(tmp_path):
    """The Hub's parquet export (label ids, idx; the test split's labels are -1) and MRPC's raw
    msr_paraphrase_test.txt (a TSV with a BOM, quotes left as they are, no index column)."""
    pd.DataFrame({"sentence1": ["A man sat.", "It rained."], "sentence2": ["A person sat.", "It was dry."],
                  "label": [1, 0], "idx": [0, 1]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"sentence1": ["He left."], "sentence2": ["He stayed."], "label": [-1], "idx": [42]}).to_parquet(
        tmp_path / "test.parquet")
    data = glue.load_local_files({"train": tmp_path / "train.parquet", "test": tmp_path / "test.parquet"},
                                 glue.TASKS["rte"])
    assert list(data.train["label"]) == [1, 0] and list(data.tests["rte"]["idx"]) == ["42"]
    raw = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1089874\t1089925\tPCCW 's chief said \"no\" .\t" \
          "Chief \"no\" , said PCCW .\n0\t3019446\t3019327\tThe sky was \"blue .\tIt rained .\n"
    (tmp_path / "msr_paraphrase_test.txt").write_text(raw, encoding="utf-8")
    mrpc = glue.load_local_files({"test": tmp_path / "msr_paraphrase_test.txt"}, glue.TASKS["mrpc"])
    test = mrpc.tests["mrpc"]
    assert list(test["sentence1"]) == ["PCCW 's chief said \"no\" .", "The sky was \"blue ."]
    assert "idx" not in test.column_names  # no index column: the predictions are numbered by row, as GLUE's test.tsv


QQP_HEADER = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"


@pytest.mark.parametrize("split, body, message", [
    # a record broken over two lines (as QQP's train.tsv has had): pandas padded the first half with ''
    ("train", "0\t1\t2\tHow do I learn?\tHow to learn\n fast?\t1\n1\t3\t4\tWhy?\tWhy not?\t0\n",
     r"train.tsv, line 2: 5 field\(s\) where the header has 6 \(0 \| 1 \| 2 \| How do I learn\? \| \.\.\.\): a record "
     r"broken over two lines"),
    # one field too many in a test file: pandas dropped the row with a warning, shifting every later index
    ("test", "0\t1\t2\tHow?\tHow so?\n1\t3\t4\tWhy?\tWhy\tnot?\n2\t5\t6\tWho?\tWhom?\n",
     r"test.tsv, line 3: 6 field\(s\) where the header has 5"),
])
def test_rows_that_do_not_fit_the_columns_name_their_line(tmp_path, split, body, message):
    header = QQP_HEADER if split == "train" else QQP_HEADER.replace("\tis_duplicate", "")
    (tmp_path / f"{split}.tsv").write_text(header + body)
    with pytest.raises(UserError, match=message):
        glue.load_local_files({split: tmp_path / f"{split}.tsv"}, glue.TASKS["qqp"])


def test_a_short_row_of_a_headerless_file_names_its_line(tmp_path):
    (tmp_path / "cola.tsv").write_text("gj04\t1\t\tA fine sentence.\ngj04\t0\tBroken.\n")
    with pytest.raises(UserError, match=r"cola.tsv, line 2: 3 field\(s\) where the task has 4"):
        glue.load_local_files({"train": tmp_path / "cola.tsv"}, glue.TASKS["cola"])


def test_glue_cola_headerless_and_qnli_string_labels(tmp_path):
    (tmp_path / "cola.tsv").write_text("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we "
                                       "propose.\ngj04\t0\t*\tThey drank the pub.\n")
    cola = glue.load_local_files({"validation": tmp_path / "cola.tsv"}, glue.TASKS["cola"])
    assert list(cola.evals[""]["label"]) == [1, 0] and list(cola.evals[""]["sentence1"])[1] == "They drank the pub."
    (tmp_path / "qnli.tsv").write_text("index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n"
                                       "1\tWhere?\tIt rained.\tnot_entailment\n")
    qnli = glue.load_local_files({"train": tmp_path / "qnli.tsv"}, glue.TASKS["qnli"])
    assert list(qnli.train["label"]) == [0, 1] and list(qnli.train["sentence1"]) == ["Who?", "Where?"]


def test_local_file_errors(tmp_path):
    pd.DataFrame({"review": ["a", "b"], "label": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match="--text_columns") as err:
        glue.load_local_files({"train": tmp_path / "t.csv"})
    assert "review" in str(err.value)
    with pytest.raises(UserError, match="labels 'x', 'y' are not in the task's labels"):
        glue.load_local_files({"train": tmp_path / "t.csv"}, glue.TASKS["sst2"], text_columns=["review"])
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(UserError, match="unsupported format 'xlsx'"):
        glue.load_local_files({"train": tmp_path / "t.xlsx"})
    (tmp_path / "t.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="cannot read .*t.parquet as Parquet"):
        glue.load_local_files({"train": tmp_path / "t.parquet"})
    with pytest.raises(UserError, match="does not exist"):
        glue.load_local_files({"train": tmp_path / "missing.csv"})
    with pytest.raises(UserError, match="no label column 'stars'"):
        glue.load_local_files({"train": tmp_path / "t.csv"}, text_columns=["review"], label_column="stars")


def test_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="rotten_tomatoes"):
        glue.load_hub_task(glue.TASKS["rte"], cache_dir="/nonexistent-cache-for-test")


# --- predictions ---------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("mnli", ["entailment", "contradiction", "neutral"]),
    ("cola", ["0", "1", "1"]),
    ("rotten_tomatoes", ["rotten", "fresh", "fresh"]),
])
def test_submission_format(tmp_path, name, expected):
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0], [0.0, 5.0, 1.0]])
    task = glue.TASKS[name]
    glue.write_predictions(tmp_path / "p.tsv", task, logits[:, :task.num_labels])
    lines = (tmp_path / "p.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction"
    assert lines[1:] == [f"{i}\t{label}" for i, label in enumerate(expected)]


def test_predictions_keep_the_test_files_own_index(tmp_path):
    glue.write_predictions(tmp_path / "p.tsv", glue.TASKS["mnli"], np.array([[2.0, 0, 0], [0, 0, 3.0]]),
                           ids=["17", "4"])
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n17\tentailment\n4\tcontradiction\n"


def test_submission_regression(tmp_path):
    glue.write_predictions(tmp_path / "p.tsv", glue.TASKS["stsb"], np.array([[1.23456], [4.0]]))
    assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n0\t1.235\n1\t4.000\n"


# --- arguments ---------------------------------------------------------------------------


def _parse(argv):
    from pretraining.cli import parse_args
    from pretraining.finetune.runner import GlueDataArguments, GlueModelArguments, GlueTrainingArguments

    return parse_args((GlueModelArguments, GlueDataArguments, GlueTrainingArguments), argv)


def test_seed_flags_parse(tmp_path):
    argv = ["--model_name_or_path", "m", "--task_name", "MRPC", "--max_seq_length", "128", "--output_dir",
            str(tmp_path), "--overwrite_output_dir", "--do_train", "--do_eval", "--evaluation_strategy", "steps",
            "--per_device_train_batch_size", "32", "--gradient_accumulation_steps", "1",
            "--per_device_eval_batch_size", "32", "--learning_rate", "5e-5", "--weight_decay", "0.01",
            "--eval_steps", "50", "--max_grad_norm", "1.0", "--num_train_epochs", "5",
            "--lr_scheduler_type", "polynomial", "--warmup_steps", "50"]
    model_args, data_args, args = _parse(argv)
    assert args.eval_strategy == "steps" and args.eval_steps == 50 and args.overwrite_output_dir
    assert args.lr_scheduler_type == "polynomial" and args.warmup_steps == 50 and args.learning_rate == 5e-5
    assert args.report_to == [] and data_args.task_name == "MRPC"
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model_name_or_path": "m", "task_name": "rte", "output_dir": str(tmp_path),
                                "warmup_ratio": 0.1, "early_stopping_patience": 2, "eval_strategy": "epoch"}))
    _, data_args, args = _parse([str(path)])
    assert args.warmup_steps == 0.1 and args.load_best_model_at_end and args.save_strategy == "epoch"


def test_bad_arguments_are_gathered():
    from pretraining.cli import ArgumentChecker
    from pretraining.finetune.runner import GlueDataArguments

    check = ArgumentChecker()
    GlueDataArguments(task_name="squad", max_seq_length=0, max_train_samples=-1).validate(check)
    with pytest.raises(UserError, match=r"invalid arguments \(3\)") as err:
        check.raise_if_any()
    assert "squad" in str(err.value) and "--max_seq_length" in str(err.value)


def test_model_fit_checks(bert_tokenizer):
    from pretraining.model.modeling import BertConfig

    with pytest.raises(UserError, match="30522 tokens but m embeds only 1000"):
        glue.check_model_fits(BertConfig(vocab_size=1000), bert_tokenizer, 128, "m")
    with pytest.raises(UserError, match="exceeds m's max_position_embeddings"):
        glue.check_model_fits(BertConfig(max_position_embeddings=64), bert_tokenizer, 128, "m")
    glue.check_model_fits(BertConfig(vocab_size=30528), bert_tokenizer, 128, "m")


# --- the glue_data/ folder: every task's files with GLUE's own headers and quirks --------------------------------

def _glue_data(root: Path) -> Path:
    """A small glue_data/ tree as GLUE's download script leaves it: CoLA headerless train/dev, MRPC with a BOM and
    unbalanced quotes, STS-B's 10 columns, QQP's id columns, MNLI's 12/16/10 columns and both halves, diagnostic."""
    def write(task, name, header, rows, bom=False):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        text = ("\ufeff" if bom else "") + (header + "\n" if header else "") + "".join("\t".join(r) + "\n" for r in rows)
        (folder / name).write_text(text, encoding="utf-8")

    pairs = [("A man is playing a guitar.", "A man plays \"a guitar."), ("The sky is blue.", "It rained all day.")]
    write("CoLA", "train.tsv", None, [("gj04", "1", "", "Our friends won't buy this."), ("gj04", "0", "*", "They drank the pub.")])
    write("CoLA", "dev.tsv", None, [("bc01", "1", "", "The book was read.")])
    write("CoLA", "test.tsv", "index\tsentence", [("0", "Bill ate."), ("1", "Ate Bill.")])
    write("SST-2", "train.tsv", "sentence\tlabel", [("a gorgeous film ", "1"), ("dull ", "0")])
    write("SST-2", "dev.tsv", "sentence\tlabel", [("fine ", "1")])
    write("SST-2", "test.tsv", "index\tsentence", [("0", "a mess ")])
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write("MRPC", "train.tsv", mrpc, [("1", "702876", "702977", *pairs[0]), ("0", "2108705", "2108831", *pairs[1])],
          bom=True)
    write("MRPC", "dev.tsv", mrpc, [("1", "1", "2", *pairs[0])], bom=True)
    write("MRPC", "test.tsv", "index\t#1 ID\t#2 ID\t#1 String\t#2 String", [("0", "1", "2", *pairs[1])])
    stsb = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    write("STS-B", "train.tsv", stsb + "\tscore", [("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none",
                                                     *pairs[0], "5.000"), ("1", "main-news", "x", "2013", "2", "none",
                                                                           "none", *pairs[1], "0.400")])
    write("STS-B", "dev.tsv", stsb + "\tscore", [("0", "main-captions", "MSRvid", "2012", "1", "none", "none", *pairs[0],
                                                   "4.750")])
    write("STS-B", "test.tsv", stsb, [("0", "main-captions", "MSRvid", "2012", "1", "none", "none", *pairs[1])])
    write("QQP", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
          [("133273", "213221", "213222", "How do I learn?", "How to learn?", "1"), ("5", "1", "2", "Why?", "Who?", "0")])
    write("QQP", "dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", [("7", "3", "4", "A?", "B?", "0")])
    write("QQP", "test.tsv", "id\tquestion1\tquestion2", [("0", "How?", "Why?"), ("1", "Who?", "Whom?")])
    mnli = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
           "sentence2_parse\tsentence1\tsentence2"
    parse = ("( ( A ) )", "( ( B ) )", "(ROOT (S A))", "(ROOT (S B))")
    write("MNLI", "train.tsv", mnli + "\tlabel1\tgold_label",
          [("0", "31193", "31193n", "government", *parse, *pairs[0], "neutral", "neutral")])
    for name, n in (("dev_matched.tsv", 2), ("dev_mismatched.tsv", 1)):
        write("MNLI", name, mnli + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
              [(str(i), "1", "1e", "fiction", *parse, *pairs[0], *["entailment"] * 6) for i in range(n)])
    write("MNLI", "test_matched.tsv", mnli, [("0", "1", "1c", "fiction", *parse, *pairs[1])])
    write("MNLI", "test_mismatched.tsv", mnli, [("0", "1", "1c", "letters", *parse, *pairs[1]),
                                               ("1", "2", "2c", "letters", *parse, *pairs[0])])
    for task, labels in (("QNLI", ("entailment", "not_entailment")), ("RTE", ("entailment", "not_entailment")),
                         ("WNLI", ("0", "1"))):
        header = "index\tquestion\tsentence" if task == "QNLI" else "index\tsentence1\tsentence2"
        write(task, "train.tsv", header + "\tlabel", [("0", *pairs[0], labels[0]), ("1", *pairs[1], labels[1])])
        write(task, "dev.tsv", header + "\tlabel", [("0", *pairs[0], labels[1])])
        write(task, "test.tsv", header, [("0", *pairs[1])])
    write("diagnostic", "diagnostic.tsv", "index\tsentence1\tsentence2", [("0", *pairs[0]), ("1", *pairs[1])])
    return root


@pytest.mark.parametrize("name, train, evals, tests", [
    ("cola", [1, 0], {"": 1}, {"cola": 2}), ("sst2", [1, 0], {"": 1}, {"sst2": 1}),
    ("mrpc", [1, 0], {"": 1}, {"mrpc": 1}), ("stsb", [5.0, 0.4], {"": 1}, {"stsb": 1}),
    ("qqp", [1, 0], {"": 1}, {"qqp": 2}), ("mnli", [1], {"": 2, "_mm": 1}, {"mnli": 1, "mnli-mm": 2}),
    ("qnli", [0, 1], {"": 1}, {"qnli": 1}), ("rte", [0, 1], {"": 1}, {"rte": 1}), ("wnli", [0, 1], {"": 1}, {"wnli": 1}),
    ("ax", None, {}, {"ax": 2}),
])
def test_every_task_of_a_glue_data_folder_loads(tmp_path, name, train, evals, tests):
    data = glue.load_glue_dir(_glue_data(tmp_path / "glue_data"), glue.TASKS[name])
    if train is None:
        assert data.train is None
    else:
        assert list(data.train["label"]) == pytest.approx(train)
    assert {k: len(v) for k, v in data.evals.items()} == evals
    assert {k: len(v) for k, v in data.tests.items()} == tests
    for split in data.tests.values():  # every GLUE test file has its own index (QQP: id), kept for the predictions
        assert list(split["idx"]) == [str(i) for i in range(len(split))]
    if name == "mrpc":  # the BOM is not part of the first column's name; quotes stay as they are
        assert list(data.train["sentence2"])[0] == "A man plays \"a guitar."
