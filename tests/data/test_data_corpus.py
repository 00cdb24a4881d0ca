"""Corpus readers: every input format, the named datasets, and clear errors for bad input."""

from __future__ import annotations

import bz2
import gzip
import json

import numpy as np
import pytest

from pretraining.data.corpus import (
    expand_input_files, iter_dataset_texts, iter_documents, offline_wikipedia, read_files, read_parquet,
)
from pretraining.errors import UserError
from pretraining.resources import mediawiki_dump


def _texts(paths):
    return [text.strip() for text, _ in read_files(expand_input_files([str(p) for p in paths]))]


def test_txt_one_document_per_line_or_blank_line_separated(tmp_path):
    per_line = tmp_path / "lines.txt"
    per_line.write_text("First document. Two sentences.\n\nSecond document.\nThird document.\n\n")
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("Doc one, sentence one.\nDoc one, sentence two.\n\n\nDoc two.\n   \nDoc three.\n")
    single = tmp_path / "single.txt"
    single.write_text("Only document line one.\nStill line two.\n\n")
    # a blank line separating content switches to the block layout
    assert _texts([per_line]) == ["First document. Two sentences.", "Second document.\nThird document."]
    assert _texts([blocks]) == ["Doc one, sentence one.\nDoc one, sentence two.", "Doc two.", "Doc three."]
    # no blank line between content (only a trailing one): one document per line
    assert _texts([single]) == ["Only document line one.", "Still line two."]


def test_json_jsonl_parquet_and_compressed_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"text": "three"}, {"text": "four"}], indent=1))
    (tmp_path / "c.json").write_text('{"text": "five"}\n{"text": "six"}\n')
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["seven", "", "eight"]}), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "e.txt.gz", "wt") as f:
        f.write("nine\nten\n")
    with bz2.open(tmp_path / "f.jsonl.bz2", "wt") as f:
        f.write('{"text": "eleven"}\n')
    (tmp_path / "ignored.csv").write_text("not read")
    # an empty parquet row is read as an empty document (prepare skips and counts those, in every format)
    assert _texts([tmp_path]) == ["one", "two", "three", "four", "five", "six", "seven", "", "eight", "nine", "ten",
                                  "eleven"]


def test_parquet_is_read_one_row_group_at_a_time(tmp_path):
    """Memory of a Parquet corpus stays at one row group's, whatever the file's size (pyarrow's pre_buffer kept
    every row group read so far: 1 GiB for a 2 GiB corpus)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "big.parquet"
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", dtype=np.uint8)
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for _ in range(100):  # 100 row groups of ~200 kB of random text (it barely compresses): 20 MB in all
            rows = letters[rng.integers(0, len(letters), size=(1000, 200))]
            writer.write_table(pa.table({"text": [row.tobytes().decode() for row in rows]}))
    before, peak, count = pa.total_allocated_bytes(), 0, 0
    for text, _ in read_parquet(path):
        count += 1
        if count % 1000 == 0:
            peak = max(peak, pa.total_allocated_bytes() - before)
    assert count == 100_000 and peak < 4_000_000, peak


def test_named_datasets(tmp_path):
    from datasets import Dataset

    offline = list(offline_wikipedia())
    assert len(offline) == 10033 and not any(wiki for _, wiki in offline)
    assert list(iter_documents("wikipedia-offline"))[:3] == offline[:3]
    # --dataset wikipedia reads rows of a datasets.Dataset: the same code path on local rows
    rows = Dataset.from_dict({"id": ["1", "2", "3"], "text": [offline[0][0], "", offline[1][0]]})
    assert list(iter_dataset_texts(rows, batch_size=2)) == [offline[0], offline[1]]
    with pytest.raises(UserError, match="unknown --dataset 'wikipedia-fr'.*wikipedia-offline"):
        iter_documents("wikipedia-fr")


def test_hub_wikipedia_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="network.*wikipedia-offline"):
        next(iter_documents("wikipedia", dataset_config="20231101.simple"))


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "does not exist"),
    ("table.csv", "a,b\n", "unsupported file type"),
    ("bad.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', "line 2 has no 'text' field"),
    ("broken.jsonl", '{"text": \n', "line 1 is not valid JSON"),
    ("dump.xml.bz2", b"this is not bzip2 data", "cannot read .*dump.xml.bz2"),
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"),
     r"latin1.txt is not UTF-8 text: byte 0xe9 \(invalid continuation byte\) on line 1, column 4; re-encode it"),
])
def test_bad_input_raises_user_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        list(read_files(expand_input_files([str(path)])))


def test_truncated_dump_is_an_error_not_silently_short(tmp_path):
    data = mediawiki_dump().read_bytes()
    truncated = tmp_path / "truncated.xml.bz2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated.xml.bz2"):
        list(read_files([truncated]))
