"""The export check, the README check and the command line's handling of missing stages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from biovita_nb import cli

NBDEV_EXPORT = str(Path(sys.executable).with_name("nbdev-export"))


@pytest.fixture()
def project_copy(project_root, tmp_path):
    """A copy of the project's notebooks, package code and tools."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy2(project_root / "pyproject.toml", copy)
    shutil.copy2(project_root / "README.md", copy)
    for folder in ("nbs", "tools"):
        shutil.copytree(project_root / folder, copy / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(project_root / "biovita_nb", copy / "biovita_nb", ignore=shutil.ignore_patterns("__pycache__", "sample"))
    return copy


def run_tool(copy, name, *args):
    return subprocess.run([sys.executable, str(copy / "tools" / name), "--root", str(copy), *args],
                          capture_output=True, text=True)


def test_export_check_passes_on_clean_copy(project_copy):
    result = run_tool(project_copy, "check_export.py", "--nbdev-export", NBDEV_EXPORT)
    assert result.returncode == 0, result.stderr


def test_notebook_edit_without_export_fails(project_copy):
    path = project_copy / "nbs" / "00_config.ipynb"
    notebook = nbformat.read(path, as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "def seed_everything" in c.source)
    cell.source = cell.source.replace("random.seed(seed)", "random.seed(seed + 1)")
    nbformat.write(notebook, path)
    result = run_tool(project_copy, "check_export.py", "--nbdev-export", NBDEV_EXPORT)
    assert result.returncode == 1
    assert "out of date with the notebooks" in result.stderr
    assert "biovita_nb/config.py differs from its notebook nbs/00_config.ipynb" in result.stderr
    assert "random.seed(seed + 1)" in result.stderr


def test_module_edit_without_notebook_fails(project_copy):
    module = project_copy / "biovita_nb" / "cli.py"
    module.write_text(module.read_text() + "\nEXTRA = 1\n")
    result = run_tool(project_copy, "check_export.py", "--nbdev-export", NBDEV_EXPORT)
    assert result.returncode == 1
    assert "biovita_nb/cli.py differs" in result.stderr


def test_readme_check_detects_stale_readme(project_copy):
    assert run_tool(project_copy, "readme.py", "--check").returncode == 0
    (project_copy / "README.md").write_text("old\n")
    result = run_tool(project_copy, "readme.py", "--check")
    assert result.returncode == 1
    assert "make readme" in result.stderr


def test_missing_stage_notebook_reported(tmp_path, capsys):
    status = cli.main(["train", "--preset", "smoke", "--notebooks", str(tmp_path)])
    assert status == 2
    assert "Stage 'train' is not available yet" in capsys.readouterr().err


def test_stage_without_parameters_cell_reported(tmp_path, capsys):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(notebook, tmp_path / "01_data.ipynb")
    status = cli.main(["data", "--preset", "smoke", "--notebooks", str(tmp_path)])
    assert status == 2
    assert "has no cell tagged 'parameters'" in capsys.readouterr().err


def test_stage_runs_with_typed_parameters(tmp_path):
    code = ("import json, pathlib\n"
            "from biovita_nb.config import run_paths\n"
            "out = run_paths(run_name).root / 'seen.json'\n"
            "out.write_text(json.dumps(dict(preset=preset, device=device, overrides=overrides, force=force)))\n")
    _stage_notebook(tmp_path, code, kernel="no-such-kernel")
    executed = cli.run_stage("data", preset="smoke", run_name="p", overrides=["data.recordings_table=a=b.csv"],
                             force=True, notebooks=tmp_path)
    assert executed.is_file()
    seen = json.loads((executed.parents[1] / "seen.json").read_text())
    assert seen == {"preset": "smoke", "device": "auto", "overrides": ["data.recordings_table=a=b.csv"], "force": True}


def test_bad_override_rejected_before_running(tmp_path, capsys):
    status = cli.main(["data", "--preset", "smoke", "-o", "nope=1", "--notebooks", str(tmp_path)])
    assert status == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


def test_stage_before_prerequisite_names_command(monkeypatch):
    monkeypatch.delenv("IN_TEST", raising=False)
    with pytest.raises(cli.StageNotReadyError, match="Run it first: biovita data --preset smoke --run smoke"):
        cli.prepare_stage("train", preset="smoke")


def test_stage_after_prerequisite_prepares_run(monkeypatch):
    monkeypatch.delenv("IN_TEST", raising=False)
    config, run = cli.prepare_stage("data", preset="smoke", run_name="r1", overrides=["seed=4"])
    cli.complete_stage("data", run, {"recordings": 27})
    config, run = cli.prepare_stage("train", preset="smoke", run_name="r1", device="cpu", overrides=["seed=4"])
    assert config["device"] == "cpu"
    assert json.loads(cli.stage_marker(run, "data").read_text())["summary"] == {"recordings": 27}
    assert (run.logs / "train.log").is_file()


def test_nbdev_test_runs_prerequisites_in_temp_folder(monkeypatch):
    monkeypatch.setenv("IN_TEST", "1")
    calls = []
    monkeypatch.setattr(cli, "run_stage_function", lambda stage, config, run, force=False: calls.append((stage, config["name"], run.root)) or {})
    config, run = cli.prepare_stage("report", preset="demo", run_name="t")
    assert config["name"] == "smoke"
    assert [stage for stage, _, _ in calls] == ["data", "bench"]
    assert all(root == run.root for _, _, root in calls)
    assert cli.stage_complete(run, "bench")
    assert "biovita-nbdev-report-" in str(run.root)


def test_papermill_cli_parameter_types(tmp_path):
    code = ("import json\n"
            "json.dump({name: [value, type(value).__name__] for name, value in dict(preset=preset, run_name=run_name, "
            "overrides=overrides, force=force, device=device).items()}, open('seen.json', 'w'))\n")
    _stage_notebook(tmp_path, code, name="stage.ipynb")
    command = [str(Path(sys.executable).with_name("papermill")), "stage.ipynb", "out.ipynb", "-p", "preset", "smoke",
               "-p", "run_name", "a=b", "-p", "force", "True", "-p", "device", "7",
               "-y", 'overrides: ["data.recordings_table=x=y.csv", "train.stage1.epochs=3"]']
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]

    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["preset"] == ["smoke", "str"]
    assert seen["run_name"] == ["a=b", "str"]
    assert seen["force"] == [True, "bool"]
    assert seen["device"] == [7, "int"]
    assert seen["overrides"] == [["data.recordings_table=x=y.csv", "train.stage1.epochs=3"], "list"]


def test_train_notebook_before_data_names_stage(project_root, tmp_path):
    command = [str(Path(sys.executable).with_name("papermill")), str(project_root / "nbs" / "03_train.ipynb"),
               str(tmp_path / "out.ipynb"), "-p", "preset", "smoke", "-p", "run_name", "fresh"]
    env = {key: value for key, value in os.environ.items() if key != "IN_TEST"}
    result = subprocess.run(command, cwd=project_root / "nbs", capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert "StageNotReadyError" in result.stderr
    assert "Run it first: biovita data --preset smoke --run fresh" in result.stderr



def test_changed_settings_need_force(monkeypatch):
    monkeypatch.delenv("IN_TEST", raising=False)
    config, run = cli.prepare_stage("data", preset="smoke", run_name="r2")
    cli.complete_stage("data", run)
    with pytest.raises(cli.ConfigError) as info:
        cli.prepare_stage("train", preset="smoke", run_name="r2", overrides=["train.stage1.epochs=5"])
    assert "train.stage1.epochs: 2 -> 5" in str(info.value)
    assert "pass --force" in str(info.value)
    assert json.loads(run.config.read_text())["config"]["train"]["stage1"]["epochs"] == 2

    config, run = cli.prepare_stage("train", preset="smoke", run_name="r2", overrides=["train.stage1.epochs=5"], force=True)
    assert json.loads(run.config.read_text())["config"]["train"]["stage1"]["epochs"] == 5


def _stage_notebook(folder, code, name="01_data.ipynb", kernel="python3"):
    """Write a notebook with the stage parameters cell followed by `code`."""
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('preset = "demo"\nrun_name = ""\ndevice = "auto"\noverrides = []\nforce = False',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nbformat.write(notebook, folder / name)


def test_user_error_in_stage_is_one_line(tmp_path, capsys):
    _stage_notebook(tmp_path, "from biovita_nb.config import ConfigError\nraise ConfigError('data.recordings_table is missing')")
    status = cli.main(["data", "--preset", "smoke", "--notebooks", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2
    assert "biovita data: data.recordings_table is missing" in error
    assert "Traceback" not in error


def test_failing_stage_names_executed_notebook(tmp_path, capsys):
    _stage_notebook(tmp_path, "raise ValueError('broken input')")
    status = cli.main(["data", "--preset", "smoke", "--notebooks", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 1
    assert "stage data failed: ValueError: broken input" in error
    assert "notebooks/01_data.ipynb" in error


def test_stage_warnings_reach_terminal(tmp_path, capsys):
    code = ("from biovita_nb.config import run_paths, setup_logging\n"
            "import logging\n"
            "setup_logging('INFO', run_paths(run_name).logs / 'data.log')\n"
            "logging.getLogger('biovita_nb.data').warning('2 recording download(s) failed')\n"
            "logging.getLogger('biovita_nb.data').info('Manifest is complete and up to date')\n"
            "logging.getLogger('biovita_nb.data').info('ordinary progress line')\n")
    _stage_notebook(tmp_path, code)
    assert cli.main(["data", "--preset", "smoke", "--notebooks", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "WARNING biovita_nb.data: 2 recording download(s) failed" in output
    assert "up to date" in output
    assert "ordinary progress line" not in output


@pytest.mark.parametrize("notebook, module", [("01_data", "data"), ("03_train", "train"), ("04_benchmark", "benchmark"),
                                              ("05_paper", "report")])
def test_stage_notebook_logger_is_named(notebook, module):
    """A stage notebook runs its own cells as __main__, so only a named logger reaches the stage log."""
    cells = json.loads((Path(__file__).parents[1] / "nbs" / f"{notebook}.ipynb").read_text())["cells"]
    source = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    assert f'logger = logging.getLogger("biovita_nb.{module}")' in source
    assert "logging.getLogger(__name__)" not in source


def test_invalid_device_rejected_before_stage(tmp_path, capsys):
    _stage_notebook(tmp_path, "raise AssertionError('the stage must not start')")
    status = cli.main(["data", "--preset", "smoke", "--device", "tpu", "--notebooks", str(tmp_path)])
    assert status == 2
    assert "Invalid device 'tpu'" in capsys.readouterr().err


def test_entry_points_accept_short_override():
    from biovita_nb.train import entry_point_parser
    args = entry_point_parser("train", "", "").parse_args(["-o", "train.stage1.epochs=2"])
    assert args.override == ["train.stage1.epochs=2"]
