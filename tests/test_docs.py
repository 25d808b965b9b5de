"""The docs agree with each other and with the code: terms defined at first use, no dangling
references, one title per page, recipe text that matches the recipes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tfmq_export.config import load_recipe, recipe_path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCS = sorted((REPO / "docs").glob("*.md"))
#: term -> the words that must follow its first use in the README (its definition)
FIRST_USE = {"Q/DQ": "QuantizeLinear", "TIB": "temporal information block", "TIAR": "temporal information aware",
             "FSC": "finite set calibration", "W8A8": "8-bit"}


def test_the_glossary_is_linked_and_defines_every_term():
    assert "(docs/GLOSSARY.md)" in README
    glossary = (REPO / "docs" / "GLOSSARY.md").read_text()
    for term in ("W8A8", "Q/DQ", "Explicit quantization", "Static scale rule", "TIB", "Temporal table", "TIAR",
                 "FSC", "Step factors"):
        assert re.search(rf"^\*\*{re.escape(term)}\b", glossary, re.MULTILINE), term


@pytest.mark.parametrize("term", sorted(FIRST_USE))
def test_the_readme_defines_a_term_where_it_first_uses_it(term):
    text = " ".join(README.split())
    first = text.index(term)
    assert FIRST_USE[term] in text[first:first + 200], text[first:first + 200]


def test_no_page_cites_a_file_outside_the_repository():
    for page in [REPO / "README.md", *DOCS]:
        assert "ARCHITECTURE.md" not in page.read_text(), page.name


def test_every_page_has_its_own_title():
    titles = {page.name: page.read_text().splitlines()[0] for page in DOCS}
    assert len(set(titles.values())) == len(titles), titles


def test_folders_the_readme_lists_exist():
    for folder in re.findall(r"^(\w+)/ +the default place", README, re.MULTILINE):
        assert (REPO / folder / "README.md").is_file(), folder


def test_shared_presets_have_no_method_and_the_readme_says_which_recipes_use_mse():
    for bits in ("w8a8", "w4a8", "w4a16"):
        assert "method" not in json.loads(recipe_path(f"digits-{bits}").read_text())
    mse = {name for name in ("digits-qdiff-w8a8", "digits-qdiff-w4a8", "digits-tfmq-w8a8", "digits-tfmq-w4a8")
           if load_recipe(name)["static_scale_rule"] == "mse"}
    assert len(mse) == 4
    for name in ("sd-v1-4-w8a8", "sd-v1-4-w4a8", "ldm-bedroom-w8a8", "ldm-bedroom-w4a8", "digits-w4a8"):
        assert load_recipe(name)["static_scale_rule"] == "max", name
    text = " ".join(README.split())
    assert "The digits qdiff/tfmq W8A8 and W4A8 recipes use `mse`" in text
    assert "`sd-v1-4-*` and `ldm-bedroom-*` recipes use" in text


def test_quoted_errors_name_their_metric():
    """The mse-vs-max comparison is quoted in recipe notes and ANALYSIS.md: same figures, metric named."""
    analysis = " ".join((REPO / "docs" / "ANALYSIS.md").read_text().split())
    assert "0.0546 vs `max` 0.0621 output error, i.e. relative L2 error of the noise prediction" in analysis
    for name in ("digits-qdiff-w8a8", "digits-qdiff-w4a8", "digits-tfmq-w8a8", "digits-tfmq-w4a8"):
        notes = json.loads(recipe_path(name).read_text())["notes"]
        assert "0.0546 against 0.0621" in notes and "relative L2 error of the noise prediction" in notes, name
