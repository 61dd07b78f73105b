"""``run.output_dir`` made absolute: relative to the working directory, except in a Ray job's temporary copy."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine import paths
from engine.paths import in_ray_temp_working_dir, resolve_output_dir

# What `ray job submit --working-dir .` gives the entrypoint as its working directory (Ray 2.60).
JOB_CWD = "ray/session_2026-01-02_03-04-05_678901_4242/runtime_resources/working_dir_files/_ray_pkg_0123abcd"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(paths, "_announced", set())
    return home


@pytest.fixture
def job_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / JOB_CWD
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    # What Ray sets for a job's entrypoint; the decision does not rest on it.
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}}')
    return cwd


def test_a_relative_dir_is_relative_to_the_working_directory(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_output_dir("runs") == str(tmp_path / "runs")
    assert resolve_output_dir("runs/../out", cwd=tmp_path / "x") == str(tmp_path / "x" / "out")
    assert resolve_output_dir("~/elsewhere") == str(home / "elsewhere")
    assert resolve_output_dir(tmp_path / "abs") == str(tmp_path / "abs")
    assert capsys.readouterr().err == ""


def test_in_a_ray_job_copy_a_relative_dir_goes_to_the_home_once_announced(
    home: Path, job_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert in_ray_temp_working_dir()
    expected = home / "gentrain-runs" / "runs"
    assert resolve_output_dir("runs") == str(expected)
    assert resolve_output_dir("runs") == str(expected)  # a second prepare() in the same process
    err = capsys.readouterr().err
    assert err.count("gentrain: outputs under") == 1
    assert f"gentrain: outputs under {expected} " in err
    assert resolve_output_dir("nested/dir") == str(home / "gentrain-runs" / "nested" / "dir")
    # Absolute and ~ paths are the user's choice, job or not.
    assert resolve_output_dir("/mnt/shared/runs") == "/mnt/shared/runs"
    assert resolve_output_dir("~/mine") == str(home / "mine")
    assert "/mnt/shared" not in capsys.readouterr().err


def test_a_custom_ray_temp_dir_and_a_symlinked_session_count(tmp_path: Path) -> None:
    custom = tmp_path / "raytmp" / "session_2026-01-02_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    custom.mkdir(parents=True)
    assert in_ray_temp_working_dir(custom)
    latest = tmp_path / "raytmp" / "session_latest"
    latest.symlink_to(tmp_path / "raytmp" / "session_2026-01-02_x")
    assert in_ray_temp_working_dir(latest / "runtime_resources" / "working_dir_files" / "_ray_pkg_1")


def test_other_folders_do_not_count(tmp_path: Path) -> None:
    for rel in ("project", "runtime_resources/x", "ray/session_1/logs", "session_notes/runtime_resources_old"):
        d = tmp_path / rel
        d.mkdir(parents=True)
        assert not in_ray_temp_working_dir(d), rel


def test_a_job_started_without_working_dir_keeps_its_folder(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job environment alone does not move outputs: such a job runs in a folder that lasts.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    assert resolve_output_dir("runs") == str(tmp_path / "runs")


def test_prepare_puts_a_job_run_under_the_home(home: Path, job_cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"model": {"name": "vae", "hidden": [16], "latent_dim": 2}, "data": {"name": "shapes", "n": 64, "size": 8}}
    run_config, _ = engine.prepare(config, ["run.name=job", "trainer.batch_size=8"])
    assert run_config.run.output_dir == str(home / "gentrain-runs" / "runs")
    assert "gentrain: outputs under" in capsys.readouterr().err


@pytest.mark.parametrize("uri", ["s3://bucket/runs", "gs://b/r", "file:///tmp/x"])
def test_a_uri_output_dir_is_refused_by_name(uri: str) -> None:

    with pytest.raises(engine.ConfigError, match=r"run\.output_dir.*filesystem path.*not supported"):
        resolve_output_dir(uri)
