"""Ray Tune: search spaces, checks before Ray starts, and real searches on a local Ray (CPU).

Every trial is a tiny VAE run (512 shapes of 16×16, MLP of 32 units). The
searches use the session's Ray (``ray_local``) except the kill-and-resume
test, which runs ``gentrain tune`` in a subprocess with a Ray of its own.
``tune_test_plugins`` (next to this file) records each epoch's learning rate
and injects crashes when an experiment directory holds ``tune-test.settings``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import engine
from engine import cli
from engine.config import ScalingConfig, resolve
from engine.errors import ConfigError
from engine.plugins import PluginManager, load_plugins
from engine.ray.cluster import max_concurrent, trial_resources
from engine.ray.space import check_space, load_space, normalize_space
from engine.ray.tune import _final_epoch_pbt

HERE = Path(__file__).resolve().parent
TEST_PLUGINS = "tune_test_plugins"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tune_env() -> Iterator[PluginManager]:
    """Environment that makes trials and workers load the test plugins; the driver's plugin manager."""
    with pytest.MonkeyPatch.context() as mp:
        path = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(HERE) + (os.pathsep + path if path else ""))
        mp.syspath_prepend(str(HERE))
        mp.setenv("GENTRAIN_PLUGINS", TEST_PLUGINS)
        mp.setenv("GENTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
        mp.setenv("GENTRAIN_DISABLE_PLUGINS", "plots,tensorboard,sample_grids")
        yield load_plugins()


def vae_config(out: Path, name: str, *, workers: int = 1, epochs: int = 4, **tune: Any) -> dict[str, Any]:
    return {
        "model": {"name": "vae", "arch": "mlp", "hidden": [32], "latent_dim": 4},
        "data": {"name": "shapes", "n": 512, "size": 16, "val_fraction": 0.1},
        "trainer": {"epochs": epochs, "batch_size": 32, "seed": 0},
        "scaling": {"num_workers": workers, "max_failures": 0},
        "run": {"name": name, "output_dir": str(out)},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
        "tune": {"metric": "val/elbo", "mode": "min", **tune},
    }


def enable_test_plugin(experiment: Path, **settings: Any) -> None:
    """Turn the test plugin on for ``experiment`` (it reads this file)."""
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / "tune-test.settings").write_text(json.dumps(settings))


def lr_log(run_dir: Path) -> list[tuple[int, float, int]]:
    """``(epoch, lr, pid)`` for every epoch the trial started."""
    rows = []
    for line in (run_dir / "lr.log").read_text().splitlines():
        epoch, lr, pid = line.split()
        rows.append((int(epoch), float(lr), int(pid)))
    return rows


def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to reach Ray fail the test: these errors must come first."""

    def refuse() -> None:
        raise AssertionError("Ray was started before the config was checked")

    monkeypatch.setattr("engine.ray.cluster.ensure_ray", refuse)


def held_by_workers_of_2_cpus() -> int:
    """Placement groups still holding a 2-CPU worker bundle (the ASHA test's)."""
    import ray.util

    table = ray.util.placement_group_table().values()
    return sum(1 for pg in table if pg["state"] != "REMOVED" and {"CPU": 2.0} in pg["bundles"].values())


# ---------------------------------------------------------------------------
# search spaces and checks before Ray starts (no Ray)
# ---------------------------------------------------------------------------


def test_space_file_maps_onto_tune_distributions(tmp_path: Path) -> None:
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.lr: {loguniform: [1e-4, 1e-2]}\n"
        "model.beta: {choice: [1, 4]}\n"
        "model.latent_dim: {grid_search: [8, 16]}\n"
        "trainer.seed: {randint: [0, 10]}\n"
        "optim.weight_decay: {quniform: [0.0, 0.1, 0.01]}\n"
        "model.kl_warmup_steps: {qrandint: {lower: 0, upper: 100, q: 10}}\n"
    )
    space = load_space(path)
    lr = space["optim.lr"]
    assert isinstance(lr, Float)
    assert (lr.lower, lr.upper) == (1e-4, 1e-2)  # "1e-4" is a string to YAML 1.1
    assert isinstance(space["model.beta"], Categorical)
    assert space["model.beta"].categories == [1, 4]
    assert space["model.latent_dim"] == tune.grid_search([8, 16])
    assert isinstance(space["trainer.seed"], Integer)
    assert isinstance(space["optim.weight_decay"], Float)
    assert isinstance(space["model.kl_warmup_steps"], Integer)


def test_space_file_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {loguniformm: [1e-4, 1e-2]}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr.*loguniform"):
        load_space(path)
    path.write_text("optim.lr: [1e-4, 1e-2]\n")
    with pytest.raises(ConfigError, match=r"must be one distribution"):
        load_space(path)
    path.write_text("optim.lr: {loguniform: [1e-2]}\n")
    with pytest.raises(ConfigError, match=r"optim\.lr.*loguniform takes"):
        load_space(path)


def test_nested_and_python_spaces_flatten_to_dotted_keys() -> None:
    from ray import tune

    space = normalize_space(
        {"optim": {"lr": tune.loguniform(1e-4, 1e-2)}, "model.beta": {"choice": [1, 4]}, "trainer.epochs": 3}
    )
    assert set(space) == {"optim.lr", "model.beta", "trainer.epochs"}
    assert space["trainer.epochs"] == 3


def test_unknown_key_fails_before_ray_with_close_names(
    tmp_path: Path, tune_env: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    no_ray(monkeypatch)
    config = vae_config(tmp_path, "bad")
    with pytest.raises(ConfigError) as info:
        engine.tune(config, {"model.betta": tune.choice([1, 4]), "optm.lr": tune.loguniform(1e-4, 1e-2)})
    message = str(info.value)
    assert "'model.betta'" in message
    assert "did you mean 'model.beta'" in message
    assert "'optm.lr'" in message
    assert "did you mean 'optim.lr'" in message
    assert not (tmp_path / "bad").exists()


def test_values_a_field_refuses_fail_before_ray(
    tmp_path: Path, tune_env: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    no_ray(monkeypatch)
    config = vae_config(tmp_path, "bad")
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*optim\.lr"):
        engine.tune(config, {"optim.lr": tune.uniform(-1.0, 1.0)})
    with pytest.raises(ConfigError, match=r"'optim\.algo'.*'adamx'"):
        engine.tune(config, {"optim.algo": tune.choice(["adam", "adamx"])})
    with pytest.raises(ConfigError, match=r"run\.\* names the experiment"):
        engine.tune(config, {"run.name": tune.choice(["a", "b"])})


def test_per_optimizer_keys_of_a_gan_are_searchable(tune_env: PluginManager) -> None:
    from ray import tune

    raw = {"model": {"name": "gan", "arch": "mlp", "hidden": 16, "depth": 1, "latent_dim": 4}}
    check_space(raw, {"optim.per_optimizer.disc.lr": tune.loguniform(1e-4, 1e-3)}, tune_env)
    with pytest.raises(ConfigError, match="per_optimizer"):
        check_space(raw, {"optim.per_optimizer.disc.lrr": tune.loguniform(1e-4, 1e-3)}, tune_env)


def test_metric_the_model_does_not_report_fails_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    no_ray(monkeypatch)
    # Without third-party plugins nothing can add metrics, so a typo is certain.
    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("GENTRAIN_PLUGINS", raising=False)
    config = vae_config(tmp_path, "bad", metric="val/elbow")
    with pytest.raises(ConfigError, match=r"tune\.metric = 'val/elbow'.*did you mean 'val/elbo'"):
        engine.tune(config, {"optim.lr": tune.loguniform(1e-4, 1e-2)}, plugins=load_plugins())


def test_tune_section_is_validated_and_pbt_needs_checkpoints(
    tmp_path: Path, tune_env: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    no_ray(monkeypatch)
    with pytest.raises(ConfigError, match=r"tune\.scheduler = 'ashaa'"):
        resolve(vae_config(tmp_path, "x", scheduler="ashaa"), tune_env)
    config = vae_config(tmp_path, "x", scheduler="pbt", perturbation_interval=3)
    config["trainer"]["checkpoint_every"] = 2
    with pytest.raises(ConfigError, match=r"perturbation_interval.*multiple of trainer\.checkpoint_every"):
        engine.tune(config, {"optim.lr": tune.loguniform(1e-4, 1e-2)})
    config = vae_config(tmp_path, "x", scheduler="pbt")
    with pytest.raises(ConfigError, match=r"PBT mutation 'model\.latent_dim'.*changes the shapes"):
        engine.tune(config, {"model.latent_dim": tune.choice([4, 8]), "model.beta": tune.uniform(0.5, 2)})
    config = vae_config(tmp_path, "x", grace_period=9)
    with pytest.raises(ConfigError, match=r"tune\.grace_period.*trainer\.epochs=4"):
        engine.tune(config, {"optim.lr": tune.loguniform(1e-4, 1e-2)})


@pytest.mark.skipif(importlib.util.find_spec("optuna") is not None, reason="optuna is installed")
def test_optuna_without_the_package_says_how_to_install(
    tmp_path: Path, tune_env: PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    no_ray(monkeypatch)
    config = vae_config(tmp_path, "x", search="optuna")
    with pytest.raises(ConfigError, match=r"needs the optuna package.*gentrain\[search\]"):
        engine.tune(config, {"optim.lr": tune.loguniform(1e-4, 1e-2)})


def test_concurrency_follows_the_cluster() -> None:
    cpu = {"CPU": 1.0}
    assert max_concurrent(ScalingConfig(num_workers=1), cpu, [{"CPU": 4.0}]) == 4
    assert max_concurrent(ScalingConfig(num_workers=2), cpu, [{"CPU": 4.0}]) == 2
    assert max_concurrent(ScalingConfig(num_workers=0), cpu, [{"CPU": 3.0}, {"CPU": 2.0}]) == 5
    assert max_concurrent(ScalingConfig(num_workers=2), {"CPU": 2.0}, [{"CPU": 3.0}]) == 0
    spread = ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD")
    assert max_concurrent(spread, cpu, [{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 2.0}]) == 3
    assert max_concurrent(spread, cpu, [{"CPU": 8.0}, {"CPU": 1.0}]) == 1
    pack = ScalingConfig(num_workers=2, placement_strategy="STRICT_PACK")
    assert max_concurrent(pack, cpu, [{"CPU": 3.0}, {"CPU": 3.0}]) == 2
    gpus = {"CPU": 1.0, "GPU": 1.0}
    assert max_concurrent(ScalingConfig(num_workers=2, use_gpu=True), gpus, [{"CPU": 16.0, "GPU": 4.0}]) == 2
    # The driver of a trial with workers reserves no CPU; an in-process trial is a worker.
    assert trial_resources(ScalingConfig(num_workers=2))["CPU"] == 0
    assert trial_resources(ScalingConfig(num_workers=0, cpus_per_worker=2)) == {"CPU": 2.0}


def test_cli_tune_needs_a_space(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tune", "model.name=vae"]) == 2
    assert "--space" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# real searches on Ray
# ---------------------------------------------------------------------------


@pytest.mark.ray
def test_asha_stops_weak_trials_and_best_config_trains_again(
    tmp_path: Path, tune_env: PluginManager, ray_local: dict[str, Any]
) -> None:
    from ray import tune

    # Two CPUs per worker: the 4-CPU test cluster holds two trials at once, as a 2-CPU machine would.
    config = vae_config(tmp_path, "asha", workers=1, epochs=4, num_samples=1, reduction_factor=2, max_failures=0)
    config["scaling"]["cpus_per_worker"] = 2
    space = {"optim.lr": tune.grid_search([3e-3, 1e-4]), "model.beta": tune.grid_search([1.0, 4.0])}
    started = time.monotonic()
    result = engine.tune(config, space, verbose=0, plugins=tune_env)
    elapsed = time.monotonic() - started
    print(f"ASHA search, 4 trials x 1 worker, 2 at a time: {elapsed:.1f} s")

    trials = result.trials
    assert len(trials) == 4
    assert all(t.error is None for t in trials), [t.error for t in trials]
    epochs = sorted(t.epochs for t in trials)
    assert epochs[0] < 4, f"ASHA stopped no trial: {epochs}"
    assert epochs[-1] == 4
    best = result.best
    assert best is not None
    assert best.status == "completed"
    assert best.params["optim.lr"] == 3e-3  # the low learning rate cannot win in 4 epochs
    # The table, the CSV and the plot.
    assert best.trial_id in result.table().splitlines()[2]
    rows = list(csv.DictReader(result.csv_path.read_text().splitlines()))
    assert len(rows) == 4
    assert {r["trial_id"] for r in rows} == {t.trial_id for t in trials}
    assert result.plot_path is not None
    assert result.plot_path.stat().st_size > 0
    assert result.csv_path == tmp_path / "asha" / "trials.csv"

    # The worker groups of stopped trials do not keep their CPUs (their placement groups are removed).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and held_by_workers_of_2_cpus():
        time.sleep(1)
    assert not held_by_workers_of_2_cpus()

    # best.yaml is a whole run config that `gentrain fit` takes back unchanged.
    assert result.best_config_path == tmp_path / "asha" / "best.yaml"
    best_raw = yaml.safe_load(result.best_config_path.read_text())
    assert best_raw["run"]["name"] == "asha-best"
    assert best_raw["run"]["output_dir"] == str(tmp_path)
    assert cli.main(["fit", str(result.best_config_path), "callbacks.progress=false"]) == 0
    trained = yaml.safe_load((tmp_path / "asha-best" / "config.yaml").read_text())
    assert trained["optim"]["lr"] == best.params["optim.lr"]
    assert trained["model"]["beta"] == best.params["model.beta"]
    for section in ("model", "data", "trainer", "scaling"):
        assert trained[section] == best_raw[section]


@pytest.mark.ray
def test_pbt_changes_the_learning_rate_inside_a_running_trial(
    tmp_path: Path, tune_env: PluginManager, ray_local: dict[str, Any]
) -> None:
    from ray import tune

    config = vae_config(
        tmp_path,
        "pbt",
        workers=0,
        epochs=8,
        scheduler="pbt",
        perturbation_interval=2,
        quantile_fraction=0.5,
        resample_probability=0.0,
        num_samples=1,
        max_concurrent_trials=2,
        max_failures=0,
    )
    enable_test_plugin(tmp_path / "pbt", sleep=0.2)
    space = {"optim.lr": tune.grid_search([3e-3, 1e-4])}
    mutations = {"optim.lr": tune.loguniform(1e-5, 1e-1)}  # perturbed by 0.8 or 1.2 (no resampling)
    started = time.monotonic()
    result = engine.tune(config, space, hyperparam_mutations=mutations, verbose=0, plugins=tune_env)
    print(f"PBT, 2 in-process trials x 8 epochs: {time.monotonic() - started:.1f} s")

    assert all(t.status == "completed" for t in result.trials), [(t.status, t.error) for t in result.trials]
    cloned = [t for t in result.trials if (t.run_dir / "exploits.log").exists()]
    assert cloned, "PBT cloned no trial"
    for trial in cloned:
        log = lr_log(trial.run_dir)
        initial = log[0][1]
        changed = next(i for i, (_, lr, _) in enumerate(log) if lr != initial)
        epoch, lr, pid = log[changed]
        # The trial went on from the donor's checkpoint, in a new process, not from epoch 0 ...
        assert epoch > 0, log
        assert pid != log[0][2], log
        assert [e for e, _, _ in log].count(0) == 1, log
        # ... with the donor's learning rate perturbed by 0.8 or 1.2 (no resampling),
        donor = ({3e-3, 1e-4} - {initial}).pop()
        assert min(abs(lr / donor - 0.8), abs(lr / donor - 1.2)) < 1e-9, (lr, donor)
        # ... and the optimizer really runs with the value Tune's config ends with.
        assert log[-1][1] == pytest.approx(trial.params["optim.lr"], rel=1e-9)


@pytest.mark.ray
def test_a_crashing_trial_is_retried_and_resumes_from_its_checkpoint(
    tmp_path: Path, tune_env: PluginManager, ray_local: dict[str, Any]
) -> None:
    from ray import tune

    config = vae_config(tmp_path, "crash", workers=1, epochs=3, scheduler="none", num_samples=1, max_failures=1)
    enable_test_plugin(tmp_path / "crash", crash="exit", crash_epoch=1)
    space = {"optim.lr": tune.grid_search([3e-3, 1e-3])}
    started = time.monotonic()
    result = engine.tune(config, space, verbose=0, plugins=tune_env)
    print(f"2 trials x 1 worker, one crash and retry: {time.monotonic() - started:.1f} s")

    assert [t.status for t in result.trials] == ["completed", "completed"], [t.error for t in result.trials]
    crashed_id = (tmp_path / "crash" / "crashed").read_text().split()[0]
    crashed = next(t for t in result.trials if t.trial_id == crashed_id)
    log = lr_log(crashed.run_dir)
    epochs = [epoch for epoch, _, _ in log]
    # Epoch 0 ran once; epoch 1 twice (the crash, then the retry resuming from epoch 0's checkpoint).
    assert epochs == [0, 1, 1, 2], log
    assert log[1][2] != log[2][2]
    other = next(t for t in result.trials if t.trial_id != crashed_id)
    assert [epoch for epoch, _, _ in lr_log(other.run_dir)] == [0, 1, 2]


@pytest.mark.ray
def test_a_metric_no_trial_reports_ends_the_search_with_a_clear_error(
    tmp_path: Path, tune_env: PluginManager, ray_local: dict[str, Any]
) -> None:
    from ray import tune

    # A third-party plugin may add metrics, so only the trials can tell that "val/fid" never comes.
    config = vae_config(tmp_path, "nometric", workers=0, epochs=2, metric="val/fid", num_samples=1, max_failures=1)
    space = {"optim.lr": tune.grid_search([3e-3, 1e-3, 5e-4])}
    with pytest.raises(
        ConfigError, match=r"tune\.metric = 'val/fid'.*not among the metrics trial .* reports.*val/elbo"
    ):
        engine.tune(config, space, verbose=0, plugins=tune_env)


@pytest.mark.ray
def test_a_killed_experiment_resumes_with_the_cli(tmp_path: Path, tune_env: PluginManager) -> None:
    out = tmp_path / "out"
    config = vae_config(out, "killed", workers=0, epochs=6, scheduler="none", num_samples=1, max_failures=0)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    space_path = tmp_path / "space.yaml"
    space_path.write_text("optim.lr: {grid_search: [3e-3, 1e-3]}\n")
    experiment = out / "killed"
    enable_test_plugin(experiment, sleep=0.7)
    env = {
        **os.environ,
        "RAY_ADDRESS": "local",  # a Ray of its own, never another one on this machine
        "TUNE_GLOBAL_CHECKPOINT_S": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    command = [sys.executable, "-m", "engine.cli", "tune", str(config_path), "--space", str(space_path)]
    started = time.monotonic()
    first = subprocess.Popen(
        [*command, "--verbose", "0"], env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        # Kill it once both trials have finished an epoch and Tune has saved its state since.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            logs = list((experiment / "runs").glob("*/lr.log"))
            if sum(len(p.read_text().splitlines()) >= 2 for p in logs) >= 2:
                break
            assert first.poll() is None, first.communicate()[0].decode()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail("no trial reported within 150 s")
        time.sleep(1.2)  # TUNE_GLOBAL_CHECKPOINT_S=1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    killed_at = time.monotonic() - started
    progress = {p.parent.name: len(lr_log(p.parent)) for p in (experiment / "runs").glob("*/lr.log")}
    assert not (experiment / "trials.csv").exists(), "the search ended before it was killed"
    assert any(n < 6 for n in progress.values()), progress

    resumed = subprocess.run(
        [*command, "--resume", "--verbose", "0"], env=env, capture_output=True, text=True, timeout=300
    )
    total = time.monotonic() - started
    print(f"killed after {killed_at:.1f} s with epochs started {progress}; resumed and done at {total:.1f} s")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "best.yaml" in resumed.stdout
    rows = list(csv.DictReader((experiment / "trials.csv").read_text().splitlines()))
    assert len(rows) == 2
    assert {r["status"] for r in rows} == {"completed"}, rows
    for trial_id, started_epochs in progress.items():
        if started_epochs >= 2:
            epochs = [epoch for epoch, _, _ in lr_log(experiment / "runs" / trial_id)]
            # It went on from its checkpoint: epoch 0 ran once, and every epoch ran at least once.
            assert epochs.count(0) == 1, epochs
            assert sorted(set(epochs)) == [0, 1, 2, 3, 4, 5]


def test_pbt_never_perturbs_a_trial_at_its_last_epoch() -> None:
    # A perturbation there would give the finished trial a config it never trained with
    # (seen once: a trial's config ended at lr 0.0036 while its last epochs ran at 0.0024).
    from ray.tune.schedulers import TrialScheduler

    pbt = _final_epoch_pbt()(
        last_epoch=8,
        time_attr="epoch",
        perturbation_interval=2,
        hyperparam_mutations={"optim.lr": [1e-3, 1e-2]},
        metric="val/loss",
        mode="min",
    )
    # Returns before looking at the trial or the controller (neither exists here).
    assert pbt.on_trial_result(None, None, {"epoch": 8, "val/loss": 1.0}) == TrialScheduler.CONTINUE
    with pytest.raises(KeyError):  # before the last epoch, Tune's PBT takes over and looks the trial up
        pbt.on_trial_result(None, "a trial PBT has not seen", {"epoch": 6, "val/loss": 1.0})


def test_a_trial_log_line_left_torn_by_a_kill_is_ended_not_merged_into(tmp_path: Path) -> None:
    from engine.ray.trial import _append_line

    path = tmp_path / "tune-history.jsonl"
    _append_line(path, '{"epoch": 0}')
    with path.open("a") as f:
        f.write('{"epoch": 1, "val/lo')  # what a trial SIGKILLed mid-write leaves
    _append_line(path, '{"epoch": 1}')
    assert path.read_text().splitlines() == ['{"epoch": 0}', '{"epoch": 1, "val/lo', '{"epoch": 1}']
