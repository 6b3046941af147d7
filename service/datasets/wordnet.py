"""Parse WordNet 3.0 ``data.*`` files into one-to-one (gloss, lemma) retrieval pairs.

The glosses (definitions) are the queries and the lemmas (words) the gallery: two different
"modalities" of text, which is what makes hubness show up in cross-modal retrieval. Only the
first lemma of a synset is used, and a synset is kept only if that lemma (and its gloss) is
unique, so every query has exactly one correct gallery item and vice versa.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Data files in the order they are read; the order fixes the (pre-shuffle) pair order.
DATA_FILES: tuple[str, ...] = ("data.noun", "data.verb", "data.adj", "data.adv")

# Syntactic markers on adjectives, e.g. ``galore(ip)``, ``elect(p)``, ``former(a)``.
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
# Example sentences follow the definition as ``; "..."`` (occasionally without the space).
_EXAMPLES = re.compile(r';\s*"')


@dataclass(frozen=True, slots=True)
class Synset:
    """One synset line: ``lemmas[0]`` is the word used as the gallery id."""

    pos: str  # ss_type: n, v, a, s (adjective satellite) or r
    offset: int
    lemmas: tuple[str, ...]
    gloss: str

    @property
    def lemma(self) -> str:
        """The first lemma, the one that pairs with the gloss."""
        return self.lemmas[0]


@dataclass(frozen=True, slots=True)
class Pair:
    """A query (the cleaned gloss) and its single correct gallery id (the lemma)."""

    pos: str
    offset: int
    lemma: str
    gloss: str


def clean_lemma(word: str) -> str:
    """Normalise a raw WordNet word: drop adjective markers, underscores to spaces, lower-case."""
    return _ADJ_MARKER.sub("", word).replace("_", " ").strip().lower()


def clean_gloss(gloss: str) -> str:
    """Keep only the definition: the text before the first ``; "example"``.

    A gloss that is nothing but an example sentence has no definition and cleans to ``""``.
    """
    definition = " ".join(_EXAMPLES.split(gloss, maxsplit=1)[0].split()).rstrip(";").strip()
    return "" if definition.startswith('"') else definition


def parse_data_line(line: str) -> Synset | None:
    """Parse one line of a ``data.*`` file; ``None`` for header, blank or unusable lines.

    Layout: ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt ... | gloss``
    where ``w_cnt`` is two hexadecimal digits.
    """
    if not line.strip() or line.startswith("  "):  # license header lines start with 2 spaces
        return None
    head, sep, gloss = line.partition(" | ")
    if not sep:
        head, sep, gloss = line.partition("|")
        if not sep:
            return None
    fields = head.split()
    if len(fields) < 6:
        return None
    try:
        offset = int(fields[0])
        w_cnt = int(fields[3], 16)
    except ValueError:
        return None
    pos = fields[2]
    p_cnt_at = 4 + 2 * w_cnt
    # The pointer count must follow the words and the pointers (4 fields each) must be present:
    # this catches a wrong w_cnt instead of silently taking a number as a lemma.
    if w_cnt < 1 or len(fields) <= p_cnt_at or not fields[p_cnt_at].isdigit():
        return None
    if len(fields) < p_cnt_at + 1 + 4 * int(fields[p_cnt_at]):
        return None
    words = fields[4:p_cnt_at:2]
    lemmas = tuple(clean_lemma(w) for w in words)
    definition = clean_gloss(gloss)
    if not lemmas[0] or not definition or "\n" in definition:
        return None
    return Synset(pos=pos, offset=offset, lemmas=lemmas, gloss=definition)


def iter_synsets(wordnet_dir: Path) -> list[Synset]:
    """All parseable synsets of the four data files, in file order."""
    wordnet_dir = Path(wordnet_dir)
    synsets: list[Synset] = []
    for name in DATA_FILES:
        path = wordnet_dir / name
        if not path.is_file():
            raise FileNotFoundError(
                f"WordNet data file not found: {path} (install the Debian package "
                "'wordnet-base' or pass the WordNet dict directory)"
            )
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                synset = parse_data_line(line.rstrip("\n"))
                if synset is not None:
                    synsets.append(synset)
    return synsets


def unique_pairs(synsets: list[Synset]) -> list[Pair]:
    """Keep synsets whose first lemma and gloss are both unique, so pairs are one-to-one.

    Every synset whose first lemma collides with another's is dropped (not just the later
    ones): keeping one of them would arbitrarily pick a sense. Identical glosses are dropped
    for the same reason on the query side.
    """
    lemma_counts = Counter(s.lemma for s in synsets)
    gloss_counts = Counter(s.gloss for s in synsets)
    return [
        Pair(pos=s.pos, offset=s.offset, lemma=s.lemma, gloss=s.gloss)
        for s in synsets
        if lemma_counts[s.lemma] == 1 and gloss_counts[s.gloss] == 1
    ]


def load_pairs(wordnet_dir: Path) -> list[Pair]:
    """Read a WordNet dict directory into one-to-one (gloss, lemma) pairs, in file order."""
    return unique_pairs(iter_synsets(wordnet_dir))
