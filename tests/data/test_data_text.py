"""Cleaning, sentence splitting and wiki-markup stripping."""

from __future__ import annotations

import bz2
import re

from pretraining.data.corpus import read_mediawiki
from pretraining.data.text import clean_text, normalize_whitespace, split_sentences
from pretraining.data.wikitext import is_redirect, strip_wikitext
from pretraining.resources import mediawiki_dump


def test_split_keeps_abbreviations_initials_and_decimals_inside_sentences():
    text = ('Dr. Smith met J. R. R. Tolkien in the U.S. on Jan. 5 and paid 3.14 dollars, e.g. for tea. '
            'He said "Hello." Then he left! Did he? (Yes.) 1990 was a year. Mr. Brown, i.e. the cook, agreed.')
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien in the U.S. on Jan. 5 and paid 3.14 dollars, e.g. for tea.",
        'He said "Hello."',
        "Then he left!",
        "Did he?",
        "(Yes.)",
        "1990 was a year.",
        "Mr. Brown, i.e. the cook, agreed.",
    ]


def test_split_needs_a_capital_after_the_stop_and_always_splits_lines():
    assert split_sentences("version 2. of the file. it goes on") == ["version 2. of the file. it goes on"]
    assert split_sentences("First line\r\nsecond line\n\n  third.  Fourth") == [
        "First line", "second line", "third.", "Fourth"]
    assert split_sentences("Über alles. Ελλάδα is Greece. Москва is Moscow.") == [
        "Über alles.", "Ελλάδα is Greece.", "Москва is Moscow."]
    assert split_sentences("   \n \n") == []


def test_sentences_cover_the_text():
    text = clean_text("A b.  C d?\tE f!\x00 G \u200bh...  I j.")
    assert "\x00" not in text and "\u200b" not in text
    sentences = split_sentences(text)
    assert len(sentences) == 5
    assert "".join(sentences).replace(" ", "") == text.replace(" ", "").replace("\t", "")


def test_normalize_whitespace():
    assert normalize_whitespace("  a \t b\n\n\n  c   d \n") == "a b\nc d"


def test_strip_wikitext_constructs():
    wikitext = """{{Infobox person|name=X|birth={{birth date|1900|1|1}}}}
'''Ada''' ({{IPAc-en|ˈ|eɪ|d|ə}}; born 1815) was an [[England|English]] [[mathematician]].<ref name="a">{{cite book|title=T}}</ref> She wrote ''notes''.<ref name="a"/>
[[File:Ada.jpg|thumb|Portrait by [[Alfred Chalon|Chalon]], 1840]]
<!-- a comment -->
== Life ==
{| class="wikitable"
| cell || {{flag|UK}}
|}
She met [[Charles Babbage]] in 1833 &ndash; see [http://example.com the site].
* A list item about [[Analytical Engine|the engine]].

== References ==
{{reflist}}
* A reference that must go.
[[Category:Mathematicians]]"""
    text = strip_wikitext(wikitext)
    assert "Ada (born 1815) was an English mathematician." in text
    assert "She wrote notes." in text
    assert "She met Charles Babbage in 1833 \u2013 see the site." in text
    assert "A list item about the engine." in text
    for leftover in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "|}", "Portrait", "cell", "comment",
                     "Life", "must go", "Category", "http"):
        assert leftover not in text, leftover
    assert is_redirect("#REDIRECT [[Somewhere]]") and is_redirect("  #redirect [[X]]")
    assert not is_redirect("A redirect is a page.")


def test_real_dump_articles_are_prose_and_redirects_are_skipped(tmp_path):
    raw = bz2.open(mediawiki_dump()).read().decode()
    pages = raw.split("<page>")[1:]
    expected = sum(1 for p in pages if "<redirect" not in p and "<ns>0</ns>" in p)
    (tmp_path / "dump.xml").write_text(raw)  # decompressed once (the .bz2 path is read in test_prepare)
    documents = list(read_mediawiki(tmp_path / "dump.xml"))
    assert len(documents) == expected > 100
    assert all(wiki for _, wiki in documents)
    prose = [clean_text(strip_wikitext(text)) for text, _ in documents[:40]]
    assert all(len(p) > 200 for p in prose)
    total = "\n".join(prose)
    markup = sum(total.count(m) for m in ("{{", "}}", "[[", "]]", "<ref", "'''", "&lt;", "&amp;"))
    assert markup <= 10, markup  # a pathological template or two in long articles
    assert not re.search(r"^\s*(\|-|\{\|)", total, re.M)
    assert "Achilles was the son of the Nereid Thetis and Peleus" in total
