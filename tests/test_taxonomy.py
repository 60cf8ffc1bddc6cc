"""Taxon names, keys and prompts on the bundled sample and on awkward labels."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from biovita_nb.config import sample_dir
from biovita_nb.taxonomy import (LEVELS, RANKS, TRAINING_TEMPLATES, Taxon, available_templates, canonical_name,
                                 parse_name, prompt, sample_prompt, synonym_table, taxonomic_string)


@pytest.fixture(scope="module")
def sample_tables() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(sample_dir() / f"{name}.csv") for name in ("recordings", "images")}


@pytest.mark.parametrize("raw, expected", [
    ("Antigone canadensis", "Antigone canadensis"),
    ("antigone CANADENSIS", "Antigone canadensis"),
    (" Antigone\tcanadensis\n", "Antigone canadensis"),
    ("Antigone_canadensis", "Antigone canadensis"),
    ("Mentha x piperita", "Mentha × piperita"),
    ("Mentha X piperita", "Mentha × piperita"),
    ("Mentha ×piperita", "Mentha × piperita"),
    ("Anas platyrhynchos x anas rubripes", "Anas platyrhynchos × Anas rubripes"),
    ("Canis lupus familiaris", "Canis lupus familiaris"),
    ("Rosa canina var lutetiana", "Rosa canina var. lutetiana"),
    ("Spea SP", "Spea sp."),
    ("Spea spp.", "Spea spp."),
    ("PASSERIFORMES", "Passeriformes"),
    ("", ""),
    (None, ""),
    (float("nan"), ""),
])
def test_canonical_name_cases(raw, expected):
    assert canonical_name(raw) == expected


def test_canonical_name_unicode_forms():
    decomposed = "Pe\u0301rez's vole"
    composed = "P\u00e9rez's vole"
    assert decomposed != composed
    assert canonical_name(decomposed) == canonical_name(composed)


@pytest.mark.parametrize("raw, genus, species", [
    ("Spea", "Spea", ""),
    ("Spea sp.", "Spea", ""),
    ("Spea spp", "Spea", ""),
    ("Spea cf. bombifrons", "Spea", ""),
    ("Spea bombifrons", "Spea", "Spea bombifrons"),
    ("Canis lupus familiaris", "Canis", "Canis lupus"),
    ("Mentha x piperita", "Mentha", "Mentha × piperita"),
    ("Mentha × piperita subsp. citrata", "Mentha", "Mentha × piperita"),
])
def test_parse_name_levels(raw, genus, species):
    parsed = parse_name(raw)
    assert parsed.genus == genus
    assert parsed.species == species
    assert parsed.full == canonical_name(raw)


def test_hybrid_spellings_share_key():
    keys = {Taxon.from_row({"scientific_name": name}).key("species")
            for name in ("Mentha x piperita", "Mentha ×piperita", "mentha × PIPERITA")}
    assert keys == {"Mentha × piperita"}


def test_subspecies_groups_with_species():
    subspecies = Taxon.from_row({"scientific_name": "Canis lupus familiaris"})
    species = Taxon.from_row({"scientific_name": "Canis lupus"})
    assert subspecies.key("species") == species.key("species")
    assert subspecies.scientific_name == "Canis lupus familiaris"


def test_synonym_with_accepted_name_shares_key():
    old = Taxon.from_row({"scientific_name": "Grus canadensis", "accepted_name": "Antigone canadensis",
                          "genus": "Grus", "family": "Gruidae"})
    new = Taxon.from_row({"scientific_name": "Antigone canadensis", "genus": "Antigone", "family": "Gruidae"})
    assert old.key("species") == new.key("species") == "Antigone canadensis"
    assert old.key("genus") == new.key("genus") == "Antigone"


def test_synonym_table_moves_rows_without_accepted_name():
    rows = [{"scientific_name": "Grus canadensis", "accepted_name": "Antigone canadensis"},
            {"scientific_name": "Grus canadensis", "accepted_name": ""}]
    synonyms = synonym_table(rows)
    assert Taxon.from_row(rows[1], synonyms).key("species") == "Antigone canadensis"


def test_missing_ranks_keep_record():
    taxon = Taxon.from_row({"scientific_name": "Spea bombifrons", "family": None, "class": float("nan")})
    assert taxon.key("species") == "Spea bombifrons"
    assert taxon.key("genus") == "Spea"
    assert taxon.key("family") == ""
    assert taxonomic_string(taxon) == "Spea bombifrons"


def test_sample_rows_give_full_taxa(sample_tables):
    for name, table in sample_tables.items():
        taxa = [Taxon.from_row(row) for row in table.to_dict("records")]
        for taxon in taxa:
            assert all(taxon.rank(rank) for rank in RANKS), f"{name}: {taxon}"
            assert all(taxon.key(level) for level in LEVELS), f"{name}: {taxon}"
        assert len({t.key("species") for t in taxa}) == table["accepted_name"].nunique()


def test_sample_second_recordings_share_key(sample_tables):
    table = sample_tables["recordings"]
    keys = table.apply(lambda row: Taxon.from_row(row.to_dict()).key("species"), axis=1)
    assert (keys == "Antigone canadensis").sum() == 2
    assert (keys == "Bison bison").sum() == 2


def test_sample_prompts_cover_templates(sample_tables):
    generator = torch.Generator().manual_seed(11)
    for row in sample_tables["recordings"].to_dict("records"):
        taxon = Taxon.from_row(row)
        assert available_templates(taxon) == TRAINING_TEMPLATES
        texts = {prompt(taxon, template) for template in TRAINING_TEMPLATES}
        assert len(texts) == 5
        assert sample_prompt(taxon, generator) in texts
        assert taxonomic_string(taxon).startswith("Animalia Chordata ")


def test_sample_prompt_is_seeded():
    taxon = Taxon.from_row({"scientific_name": "Gavia immer", "com": "Common Loon", "class": "Aves"})
    first = [sample_prompt(taxon, torch.Generator().manual_seed(5)) for _ in range(4)]
    second_gen, third_gen = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert len(set(first)) == 1
    assert [sample_prompt(taxon, second_gen) for _ in range(20)] == [sample_prompt(taxon, third_gen)
                                                                      for _ in range(20)]


def test_prompt_rejects_empty_taxon():
    with pytest.raises(ValueError, match="no name, common name or rank"):
        sample_prompt(Taxon(), torch.Generator())
