"""Shared fixtures: the bundled sample and a project copy for export checks."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from biovita_nb.config import sample_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture()
def sample_copy(tmp_path: Path) -> Path:
    """A writable copy of the bundled Yellowstone sample."""
    copy = tmp_path / "ysl"
    shutil.copytree(sample_dir(), copy)
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep run directories and figures of every test inside its own temporary folder."""
    monkeypatch.setenv("BIOVITA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BIOVITA_FIGURES", str(tmp_path / "figures"))
