"""The report stage end to end on the sample: tables, figures, trait probes and the up-to-date check."""
from __future__ import annotations

import json

import pandas as pd

from biovita_nb.cli import run_stage_function
from biovita_nb.config import complete_stage, init_run, load_config, sample_dir


def test_report_stage_writes_tables_and_traits(tmp_path):
    recordings = pd.read_csv(sample_dir() / "recordings.csv")
    images = pd.read_csv(sample_dir() / "images.csv")
    species = pd.concat([recordings, images])[["accepted_name", "class"]].drop_duplicates("accepted_name")
    traits = species.assign(vertebrate_class=species["class"]).drop(columns="class")
    traits_path = tmp_path / "traits.csv"
    traits.to_csv(traits_path, index=False)

    config = load_config("smoke", [f"data.traits_table={traits_path}", "benchmark.models=[random]"])
    run = init_run(config, "report")
    for stage in ("data", "bench"):
        complete_stage(stage, run, run_stage_function(stage, config, run))
    record = run_stage_function("report", config, run)
    out = run.figures("smoke")

    assert out.name == "smoke-report"
    for stem in ("datasets", "species_seen", "species_unseen", "genus_seen", "family_unseen", "ablation_seen",
                 "text_names_seen", "traits"):
        for suffix in (".md", ".tex", ".csv"):
            assert (out / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"
    for stem in ("radar_seen", "dataset", "tsne"):
        assert (out / f"{stem}.png").stat().st_size > 0
        assert (out / f"{stem}.pdf").stat().st_size > 0
    assert record["left_out"]["training_curves"] == "no training logs in this run"

    probes = pd.read_csv(out / "traits.csv")
    assert set(probes["encoder"]) == {"audio", "image", "text"}
    assert set(probes["trait"]) == {"vertebrate_class"}
    assert (probes["n_train"] > 0).all()
    species_table = pd.read_csv(out / "species_seen.csv")
    assert "Chance (this run)" in set(species_table["model"])
    assert {"paper", "this run"} <= set(species_table["source"])


def test_report_up_to_date_is_skipped(tmp_path):
    config = load_config("smoke", ["benchmark.models=[random]", "benchmark.levels=[species]"])
    run = init_run(config, "smoke")
    for stage in ("data", "bench"):
        complete_stage(stage, run, run_stage_function(stage, config, run))
    first = run_stage_function("report", config, run)
    table = run.figures("smoke") / "species_seen.md"
    stamp = table.stat().st_mtime_ns

    second = run_stage_function("report", config, run)
    assert second == first
    assert table.stat().st_mtime_ns == stamp
    run_stage_function("report", config, run, force=True)
    assert table.stat().st_mtime_ns > stamp
    assert json.loads((run.figures("smoke") / "report.json").read_text())["run"] == "smoke"
