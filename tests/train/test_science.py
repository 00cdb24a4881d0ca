"""What makes a comparison trustworthy: the untrained control, the unigram baseline of the eval loss,
a corpus-trained vocabulary, and clear errors for tokenizers that do not fit the text."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pretraining.data import unigram
from pretraining.data.collator import PretrainingCollator
from pretraining.data.shards import list_shards, read_manifest, read_shard
from pretraining.data.vocab import SPECIAL_TOKENS, train_wordpiece, wordpiece_tokenizer
from pretraining.errors import UserError
from pretraining.resources import pang_lee_polarity
from pretraining.train.training import PretrainingConfig, pretrain

pytestmark = pytest.mark.usefixtures("single_thread")
TINY_CORPUS_FLAGS = ["--max_seq_length", "64", "--max_predictions_per_seq", "10", "--num_train_shards", "2",
                     "--dup_factor", "1", "--num_test_shards", "1", "--frac_test", "0.05", "--num_workers", "1",
                     "--seed", "3"]


def _sentences() -> list[str]:
    lines = pang_lee_polarity().read_bytes().decode("latin-1").splitlines()
    return [line.split(" ", 1)[1].strip() for line in lines if line.strip()]


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


# --- the trained vocabulary ---------------------------------------------------------------------------------

def test_trained_wordpiece_round_trips_and_is_deterministic():
    texts = _sentences()
    first, second = train_wordpiece(texts, 400), train_wordpiece(texts, 400)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert 300 < len(first) <= 400
    assert [first.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    sentence = texts[0].lower()
    ids = first(sentence)["input_ids"]
    assert ids[0] == first.cls_token_id and ids[-1] == first.sep_token_id
    assert first.unk_token_id not in ids  # every character of the corpus is in its vocabulary
    normalised = first.backend_tokenizer.normalizer.normalize_str(sentence)
    assert first.decode(ids, skip_special_tokens=True).replace(" ", "") == normalised.replace(" ", "")


@pytest.mark.slow
def test_prepare_trains_a_vocabulary_that_training_and_export_use(tmp_path):
    from prepare_dataset import main

    flags = ["--max_documents", "400", "--train_tokenizer", "1000", "--masking", "dynamic", *TINY_CORPUS_FLAGS]
    manifest = main(["--output_dir", str(tmp_path / "a"), *flags])
    assert manifest["tokenizer"] == "tokenizer" and manifest["vocab_size"] == 1000
    folder = tmp_path / "a" / "tokenizer"
    assert (folder / "tokenizer.json").is_file() and (folder / "training.json").is_file()
    again = main(["--output_dir", str(tmp_path / "b"), *flags, "--num_workers", "2"])
    assert again["sha256"] == manifest["sha256"]  # same shards, bytes and all
    assert (tmp_path / "b" / "tokenizer" / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    assert main(["--output_dir", str(tmp_path / "a"), *flags])["sha256"] == manifest["sha256"]  # reused
    with pytest.raises(SystemExit):  # another vocabulary size into the same folder: refused, nothing replaced
        main(["--output_dir", str(tmp_path / "a"), *flags[:2], "--train_tokenizer", "800", *flags[4:]])
    assert (folder / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer" / "tokenizer.json").read_bytes()

    config = PretrainingConfig.parse([
        "--dataset_path", str(tmp_path / "a"), "--output_dir", str(tmp_path / "runs"), "--job_name", "v1k",
        "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
        "--max_position_embeddings", "64", "--train_batch_size", "8", "--train_micro_batch_size_per_gpu", "8",
        "--max_steps", "2", "--lr_schedule", "constant_step", "--num_warmup_steps", "0", "--no_wandb"])
    result = pretrain(config)
    assert result.model.config.vocab_size == 1000  # the model follows the dataset's tokenizer
    exported = json.loads((result.run_dir / "pretrained" / "tokenizer.json").read_text())
    assert exported["model"]["vocab"] == json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]


# --- tokenizers that do not fit -------------------------------------------------------------------------------

def _tiny_vocab_tokenizer(folder, words):
    wordpiece_tokenizer([*SPECIAL_TOKENS, *words]).save_pretrained(str(folder))
    return folder


def test_a_tokenizer_that_maps_the_corpus_to_unk_is_refused(tmp_path, capsys):
    from prepare_dataset import main

    tokenizer = _tiny_vocab_tokenizer(tmp_path / "tok", ["the", "a", "of", "."])
    with pytest.raises(SystemExit) as exc:
        main(["--output_dir", str(tmp_path / "out"), "--max_documents", "200", "--tokenizer_name", str(tokenizer),
              *TINY_CORPUS_FLAGS])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "to [UNK], above --max_unk_fraction 0.05" in err and "--train_tokenizer" in err
    share = float(err.split("maps ")[1].split("%")[0])
    assert 50 < share < 100
    assert not list((tmp_path / "out").glob("*.hdf5"))
    main(["--output_dir", str(tmp_path / "ok"), "--max_documents", "200", "--tokenizer_name", str(tokenizer),
          "--max_unk_fraction", "1", *TINY_CORPUS_FLAGS])  # asked for: allowed


def test_a_vocabulary_of_special_tokens_only_is_a_clear_error():
    with pytest.raises(UserError, match="no ordinary tokens: all 5 ids are special tokens"):
        PretrainingCollator(vocab_size=5, mask_token_id=4, special_token_ids=[0, 1, 2, 3, 4])


# --- the unigram baseline and MLM accuracy -----------------------------------------------------------------------

def test_token_counts_of_prepare_are_the_train_documents(tiny_shards):
    counts = unigram.read_counts(tiny_shards)
    manifest = read_manifest(tiny_shards)
    assert len(counts) == manifest["vocab_size"] and manifest["token_counts"] == unigram.COUNTS_FILE
    rows = [read_shard(path) for path in list_shards(tiny_shards, "train")]
    restored = sum(unigram.count_tokens(unigram.original_tokens(r), len(counts), manifest["special_token_ids"])
                   for r in rows)
    assert (counts[manifest["special_token_ids"]] == 0).all()
    # every document token is in some sample, except the ones cut by truncation
    assert (restored <= counts).all() and restored.sum() > 0.97 * counts.sum()
    logp = unigram.log_probabilities(counts)
    assert np.exp(logp).sum() == pytest.approx(1.0)
    assert 4.0 < unigram.entropy(counts) < math.log(len(counts))


@pytest.mark.slow
def test_validation_logs_mlm_accuracy_and_the_unigram_baseline(pretrain_flags, tiny_shards):
    result = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "30", "--do_validation",
                                                             "--validation_epochs", "1", "--lr", "3e-3")))
    evals = _records(result.run_dir, "eval")
    assert evals and {"eval_loss", "eval_mlm_accuracy", "eval_unigram_loss"} <= set(evals[-1])
    first, last = evals[0], evals[-1]
    assert 0.0 <= last["eval_mlm_accuracy"] <= 1.0
    # the baseline is the smoothed unigram cross-entropy of the held-out masked tokens: near the corpus entropy
    assert abs(last["eval_unigram_loss"] - unigram.entropy(unigram.read_counts(tiny_shards))) < 1.0
    assert first["eval_unigram_loss"] == pytest.approx(last["eval_unigram_loss"])  # same shard, same masks
    untrained = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "0", "--do_validation",
                                                                job="untrained")))
    (start,) = _records(untrained.run_dir, "eval")
    assert start["eval_loss"] > start["eval_unigram_loss"] + 1.0  # an untrained model is worse than frequencies
    assert start["eval_unigram_loss"] == pytest.approx(last["eval_unigram_loss"])


@pytest.mark.parametrize("sparse", [False, True])
def test_validation_sums_match_a_direct_computation_with_nsp(sparse):
    """eval_loss (MLM + NSP), eval_mlm_loss and accuracy over two batches equal the masked tokens' own figures."""
    import torch.nn.functional as F

    from pretraining.train.evaluation import MaskedLMSums
    from pretraining.model.modeling import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=16,
                                          sparse_mask_prediction=sparse)).eval()
    sums, logits_all, targets_all, weighted = MaskedLMSums(), [], [], 0.0
    for masked in (3, 7):
        ids = torch.randint(5, 50, (2, 8))
        labels = torch.full_like(ids, -100)
        labels.view(-1)[torch.randperm(16)[:masked]] = ids.view(-1)[:masked]
        with torch.no_grad():
            output = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids),
                           labels=labels, next_sentence_label=torch.tensor([0, 1]))
            dense = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
        sums.add(output, labels, None)
        keep = labels != -100
        logits_all.append(dense.prediction_logits[keep])
        targets_all.append(labels[keep])
        weighted += float(output.loss) * masked
    metrics = MaskedLMSums.metrics(sums.values(), nsp=True)
    logits, targets = torch.cat(logits_all), torch.cat(targets_all)
    assert metrics["eval_mlm_loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-5)
    assert metrics["eval_mlm_accuracy"] == pytest.approx(float((logits.argmax(-1) == targets).float().mean()))
    assert metrics["eval_loss"] == pytest.approx(weighted / 10) and metrics["eval_loss"] > metrics["eval_mlm_loss"]


def test_max_steps_0_exports_the_initial_weights_as_the_control(pretrain_flags):
    from pretraining.model.modeling import BertForPreTraining

    result = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "0", job="control")))
    assert result.end["step"] == 0 and result.end["reason"] == "max_steps"
    exported = BertForPreTraining.from_pretrained(str(result.run_dir / "pretrained"))
    trained = pretrain(PretrainingConfig.parse(pretrain_flags("--max_steps", "1", job="one_step")))
    start = {k: v for k, v in exported.state_dict().items()}
    moved = trained.model.state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(start[key], moved[key])  # one step moves the weights the control keeps
    torch.manual_seed(0)
    from pretraining.report.table import load_run

    assert load_run(result.run_dir).optimizer == "none" and load_run(trained.run_dir).optimizer == "adamw"


# --- learning is healthy: context is used at least as fast as transformers' BERT learns to ---------------------

def _copy_batches(steps, vocab=40, words=30, half=6, batch=32, seed=1):
    """Each row a random word sequence written twice; masked words are copyable from the other half only."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        sequence = torch.randint(5, 5 + words, (batch, half), generator=g)
        ids = torch.cat([torch.full((batch, 1), 2), sequence, torch.full((batch, 1), 3), sequence,
                         torch.full((batch, 1), 3)], dim=1)
        pick = torch.rand(batch, half, generator=g) < 0.3
        first_half = torch.rand(batch, half, generator=g) < 0.5
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[:, 1:1 + half] = pick & first_half
        masked[:, 2 + half:2 + 2 * half] = pick & ~first_half
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        yield dict(input_ids=ids.masked_fill(masked, 4), attention_mask=torch.ones_like(ids),
                   token_type_ids=torch.zeros_like(ids)), labels


def _steps_to_learn_copy(model, steps=900, lr=2e-3, threshold=1.0):
    """Optimizer steps until the 10-step mean MLM loss is below ``threshold`` (log(30) = 3.4 is the unigram level)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    losses = []
    for step, (inputs, labels) in enumerate(_copy_batches(steps)):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if len(losses) >= 10 and sum(losses[-10:]) / 10 < threshold:
            return step + 1
    return None


@pytest.mark.slow
def test_copy_task_is_learned_at_least_as_fast_as_transformers_bert():
    """The health check behind every pretraining number: on batches where the masked word can only be
    copied from context, this project's model escapes the unigram plateau no later than transformers'
    BertForMaskedLM. Post-LN from the very same initial weights; pre-LN (no transformers twin) against
    transformers' BERT at the same, larger init scale, where the plateau is short and varies little."""
    import transformers

    from pretraining.model.modeling import BertConfig, BertForPreTraining

    shape = dict(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours_options = dict(next_sentence_prediction=False, sparse_mask_prediction=True, unpad_inputs=True)
    torch.manual_seed(2)
    reference = transformers.BertForMaskedLM(transformers.BertConfig(**shape))
    same_init = BertForPreTraining(BertConfig(**shape, encoder_ln_mode="post-ln", **ours_options))
    assert not same_init.load_state_dict(reference.state_dict(), strict=False).missing_keys
    reference_steps = _steps_to_learn_copy(reference)
    assert reference_steps is not None, "transformers' BERT did not learn the copy task: the check itself is broken"
    post_ln = _steps_to_learn_copy(same_init)
    assert post_ln is not None and post_ln <= 1.1 * reference_steps, (post_ln, reference_steps)

    torch.manual_seed(0)
    reference_steps = _steps_to_learn_copy(transformers.BertForMaskedLM(
        transformers.BertConfig(**shape, initializer_range=0.05)))
    torch.manual_seed(0)
    pre_ln = _steps_to_learn_copy(BertForPreTraining(BertConfig(**shape, initializer_range=0.05,
                                                                encoder_ln_mode="pre-ln", **ours_options)))
    assert reference_steps is not None and pre_ln is not None and pre_ln <= 1.25 * reference_steps, \
        (pre_ln, reference_steps)
