"""Plain-text cleaning and fast rule-based sentence splitting (no downloaded models).

Sentences are the units that samples are packed from (and that NSP pairs are cut
between), so the splitter errs on the side of *not* splitting: an abbreviation
("Dr.", "e.g.", "U.S."), an initial ("J. R. R. Tolkien") or a decimal never ends a
sentence; a line break always does.
"""

from __future__ import annotations

import re

# Words that end with a period without ending a sentence (compared in lower case).
ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof rev hon st mt ft jr sr sen rep gov gen col lt sgt capt cmdr adm maj
    cpl pvt fr pres supt vs etc al approx ca cf ch chap fig figs no nos vol vols pp ed eds
    inc ltd co corp bros dept est univ assn jan feb mar apr jun jul aug sep sept oct nov dec
    mon tue wed thu fri sat sun op viz
    """.split()
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff\u200b]")
_SPACES = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")
# A boundary: a line break, or terminal punctuation (plus closing quotes/brackets) and
# whitespace before an upper-case letter (Latin, Greek, Cyrillic), a digit or an
# opening quote/bracket. A single "." is then checked for abbreviations in Python.
_BOUNDARY = re.compile(
    r"\r\n|[\r\n]"
    r"|([.!?]+)[\"'\u201d\u2019\u00bb)\]]*[^\S\r\n]+"
    r"(?=[\"'\u201c\u2018\u00ab(\[]*[A-Z0-9\u00c0-\u00de\u0391-\u03a9\u0410-\u042f])"
)
_OPENERS = "\"'\u201c\u2018\u00ab(["


def clean_text(text: str) -> str:
    """Remove control characters and zero-width spaces; normalise line ends.

    Tokens do not depend on other whitespace (WordPiece ignores it) and the sentence
    splitter strips it, so runs of spaces are left alone here: that keeps cleaning
    cheap on large corpora. See :func:`normalize_whitespace` for display.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def normalize_whitespace(text: str) -> str:
    """One space between words and one newline between paragraphs."""
    return _NEWLINES.sub("\n", _SPACES.sub(" ", text)).strip()


def _previous_word(text: str, end: int) -> str:
    start = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end)) + 1
    return text[start:end].lstrip(_OPENERS)


def _is_abbreviation(word: str) -> bool:
    if len(word) == 1:  # an initial: "J. Smith"
        return word.isupper()
    if word.lower() in ABBREVIATIONS:
        return True
    parts = word.split(".")  # "U.S", "e.g", "Ph.D"
    return len(parts) > 1 and all(len(p) <= 2 and p.isalpha() for p in parts)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences (whitespace-stripped, empty ones dropped).

    A sentence ends at a line break, or at ``.``/``!``/``?`` (with any closing quotes
    or brackets) followed by whitespace and an upper-case letter, a digit or an
    opening quote -- unless the word before a single ``.`` is an abbreviation or an
    initial.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if match.group(1) == "." and _is_abbreviation(_previous_word(text, match.start())):
            continue
        sentence = text[start : match.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences
