"""Wiki markup -> plain prose, for MediaWiki XML dumps.

Not a full MediaWiki parser: it keeps the article prose and drops what is not prose
(templates, tables, references, files, categories, headings, trailing sections such
as "References"), which is what pretraining needs. Nested templates/tables/links are
removed innermost-first.
"""

from __future__ import annotations

import html
import re

_TRAILING_SECTIONS = (
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "footnotes", "notes and references", "citations", "works cited", "publications",
)
_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:", "wikt:", "s:", "commons:", ":")
_NAMESPACE_LINK = re.compile(r"\[\[\s*(?:file|image|category|media):", re.I)
_BRACKETS = re.compile(r"\[\[|\]\]")

_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_DROPPED_ELEMENTS = re.compile(
    r"<(ref|math|gallery|timeline|table|code|syntaxhighlight|source|score|imagemap|references|chem|hiero)"
    r"\b[^>]*?(?:/>|>.*?</\1\s*>)",
    re.S | re.I,
)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|[^{}]*?\|\}")
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]*(?:\s([^\]]*))?\]")
_EMPHASIS = re.compile(r"'{2,}")
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_MAGIC_WORD = re.compile(r"__[A-Z]+__")
_LIST_MARKER = re.compile(r"^[*#:;]+\s*", re.M)
_MARKUP_LINE = re.compile(r"^\s*(?:[|!{}]|\}\}).*$", re.M)
_PAREN_LEADING_PUNCT = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PAREN_TRAILING_PUNCT = re.compile(r"(?<=\S)[,;:\s]+\)")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?])")


def _remove_nested(pattern: re.Pattern, text: str, limit: int = 50) -> str:
    for _ in range(limit):
        text, n = pattern.subn("", text)
        if n == 0:
            break
    return text


def _remove_namespace_links(text: str) -> str:
    """Drop [[File:...]]/[[Image:...]]/[[Category:...]] with their captions (which may nest links)."""
    pieces, pos = [], 0
    while (start := _NAMESPACE_LINK.search(text, pos)) is not None:
        pieces.append(text[pos : start.start()])
        depth, end = 1, None
        for bracket in _BRACKETS.finditer(text, start.end()):
            depth += 1 if bracket.group() == "[[" else -1
            if depth == 0:
                end = bracket.end()
                break
        if end is None:  # unclosed: drop the rest of the line
            newline = text.find("\n", start.end())
            end = len(text) if newline < 0 else newline
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _link_text(match: re.Match) -> str:
    target, label = match.group(1), match.group(2)
    if target.strip().lower().startswith(_DROP_LINK_PREFIXES):
        return ""
    if label is not None:
        # "[[File:x.jpg|thumb|caption]]" was handled above; a plain "[[a|b]]" shows b.
        return label if "|" not in label else ""
    return target.split("#")[0] or target


def _cut_trailing_sections(text: str) -> str:
    for match in _HEADING.finditer(text):
        if match.group(2).strip().lower() in _TRAILING_SECTIONS:
            return text[: match.start()]
    return text


def strip_wikitext(text: str) -> str:
    """Return the prose of a MediaWiki page's wikitext (paragraphs separated by newlines)."""
    text = _COMMENT.sub("", text)
    text = _DROPPED_ELEMENTS.sub("", text)
    text = _cut_trailing_sections(text)
    text = _remove_nested(_TEMPLATE, text)
    text = _remove_nested(_TABLE, text)
    text = _remove_namespace_links(text)
    for _ in range(20):  # links nest inside file captions: resolve innermost first
        text, n = _LINK.subn(_link_text, text)
        if n == 0:
            break
    text = _EXTERNAL_LINK.sub(lambda m: m.group(1) or "", text)
    text = _HEADING.sub("\n", text)
    text = _EMPHASIS.sub("", text)
    text = _TAG.sub("", text)
    text = _MAGIC_WORD.sub("", text)
    text = _MARKUP_LINE.sub("", text)
    text = _LIST_MARKER.sub("", text)
    text = html.unescape(text)
    text = _TAG.sub("", text)  # tags that were entity-escaped in the source
    text = _PAREN_LEADING_PUNCT.sub("(", text)  # "(; born 1950, )" left by removed templates
    text = _PAREN_TRAILING_PUNCT.sub(")", text)
    text = _EMPTY_PARENS.sub("", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def is_redirect(text: str) -> bool:
    """True for a redirect page's wikitext ("#REDIRECT [[Target]]")."""
    return text.lstrip()[:9].upper() == "#REDIRECT"
