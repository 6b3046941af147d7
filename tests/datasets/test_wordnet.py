"""WordNet ``data.*`` parsing on synthetic lines (no system WordNet needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.datasets.wordnet import Pair, Synset, load_pairs, parse_data_line, unique_pairs

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  "
DOG = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 "
    '~ 01322604 n 0000 | a member of the genus Canis; "the dog barked all night"  '
)
# w_cnt is hexadecimal: 0a = ten words.
TEN_WORDS = (
    "00000001 03 n 0a w0 0 w1 0 w2 0 w3 0 w4 0 w5 0 w6 0 w7 0 w8 0 w9 0 000 | ten synonyms  "
)
ADJ = (
    "01234567 00 s 02 galore(ip) 0 in_abundance(p) 0 001 & 00013887 a 0000 "
    '| in great numbers; "apples galore"; "bargains galore"  '
)


def test_header_and_blank_lines_are_skipped() -> None:
    assert parse_data_line(HEADER) is None
    assert parse_data_line("") is None
    assert parse_data_line("   ") is None


def test_parses_lemmas_offset_pos_and_definition() -> None:
    synset = parse_data_line(DOG)
    assert synset == Synset(
        pos="n",
        offset=2084071,
        lemmas=("dog", "domestic dog", "canis familiaris"),
        gloss="a member of the genus Canis",
    )
    assert synset.lemma == "dog"


def test_hex_word_count() -> None:
    synset = parse_data_line(TEN_WORDS)
    assert synset is not None
    assert synset.lemmas == tuple(f"w{i}" for i in range(10))
    assert synset.gloss == "ten synonyms"


def test_adjective_markers_and_examples_are_stripped() -> None:
    synset = parse_data_line(ADJ)
    assert synset is not None
    assert synset.pos == "s"
    assert synset.lemmas == ("galore", "in abundance")
    assert synset.gloss == "in great numbers"


def test_example_without_space_after_semicolon() -> None:
    synset = parse_data_line('00000002 00 a 01 bitter 0 000 | acrid;"quinine is bitter"  ')
    assert synset is not None
    assert synset.gloss == "acrid"


def test_malformed_lines_are_rejected() -> None:
    assert parse_data_line("00000003 00 n 02 lonely 0 000 | too few words") is None
    assert parse_data_line("00000004 00 n 01 word 0 000 no gloss separator") is None
    assert parse_data_line('00000005 00 n 01 word 0 000 | "only an example"') is None


def test_colliding_first_lemmas_drop_both_synsets() -> None:
    lines = [
        "00000010 00 n 01 bank 0 000 | sloping land beside a body of water  ",
        "00000020 00 n 02 bank 0 depository 0 000 | a financial institution  ",
        "00000030 00 v 01 run 0 000 | move fast by using one's feet  ",
        # "bank" as a non-first lemma does not collide.
        "00000040 00 n 02 riverside 0 bank 0 000 | the bank of a river  ",
    ]
    synsets = [s for s in map(parse_data_line, lines) if s is not None]
    pairs = unique_pairs(synsets)
    assert [p.lemma for p in pairs] == ["run", "riverside"]
    assert pairs[0] == Pair(pos="v", offset=30, lemma="run", gloss="move fast by using one's feet")


def test_identical_glosses_are_dropped() -> None:
    lines = [
        "00000010 00 n 01 lasik 0 000 | eye surgery  ",
        "00000020 00 n 01 lasek 0 000 | eye surgery  ",
        "00000030 00 n 01 swim 0 000 | move through water  ",
    ]
    pairs = unique_pairs([s for s in map(parse_data_line, lines) if s is not None])
    assert [p.lemma for p in pairs] == ["swim"]


def test_load_pairs_checks_uniqueness_across_pos_files(tmp_path: Path) -> None:
    (tmp_path / "data.noun").write_text(
        HEADER + "\n" + DOG + "\n" + "00000100 00 n 01 fast 0 000 | a period of abstaining\n",
        encoding="utf-8",
    )
    (tmp_path / "data.verb").write_text(
        "00000200 00 v 01 bark 0 000 | make barking sounds\n", encoding="utf-8"
    )
    (tmp_path / "data.adj").write_text(
        "00000300 00 a 01 fast(a) 0 000 | acting or moving quickly\n", encoding="utf-8"
    )
    (tmp_path / "data.adv").write_text("", encoding="utf-8")
    assert [(p.pos, p.lemma) for p in load_pairs(tmp_path)] == [("n", "dog"), ("v", "bark")]


def test_load_pairs_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        load_pairs(tmp_path / "nope")
