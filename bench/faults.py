"""Fault run: SIGKILL a Ray Train worker from outside, mid-epoch, in N short runs; count recoveries and work lost.

    python bench/faults.py            # 10 runs, about 5 minutes on 2 cores
    python bench/faults.py --runs 3   # a quicker look

Every run is ``engine.fit`` of the built-in AE on ``shapes`` with 2 Ray
workers, a checkpoint every epoch and ``scaling.max_failures=3``. While it
trains, this script picks a step uniformly at random between the start of the
second epoch and the middle of the last, waits for rank 0 to reach it, and
SIGKILLs one worker process (alternating rank 0 and rank 1) from outside,
as the kernel's OOM killer or a dying node would. Ray Train restarts the
worker group; the engine resumes from the newest checkpoint on disk.

The probe (this module, loaded on every worker through ``GENTRAIN_PLUGINS``)
logs ``<step> <epoch> <pid>`` on rank 0 after each optimizer step and
sleeps a little per step so an epoch lasts about a second and a half: long
enough to land a kill inside it.

Per run the script prints the step the worker was killed at, the step the
restarted group went on from, the work lost (steps trained and then
redone, as a fraction of the checkpoint interval) and the time from the kill
to the first step after it. A run counts as recovered when ``fit`` returns
normally, the final checkpoint is of the last epoch, ``metrics.csv`` has each
epoch exactly once, and the lost work is at most one checkpoint interval.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import engine
from engine import checkpoint

HERE = Path(__file__).resolve().parent
PROBE = "faults"  # this module, as the workers import it (bench/ on PYTHONPATH)
#: Per-step pause on rank 0, seconds: epochs long enough to be killed in.
STEP_SLEEP_S = 0.05


# ---------------------------------------------------------------------------
# the probe plugin: runs inside every worker
# ---------------------------------------------------------------------------


@engine.hookimpl
def gentrain_on_fit_start(trainer: Any) -> None:
    """Each rank records its PID, so the script knows whom to kill."""
    pids = Path(trainer.run_dir) / "pids"
    pids.mkdir(exist_ok=True)
    tmp = pids / f".{trainer.rank}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.replace(pids / str(trainer.rank))


@engine.hookimpl
def gentrain_on_train_batch_end(trainer: Any, step: int) -> None:
    """Rank 0 logs every optimizer step; every rank slows down alike (DDP keeps them in step anyway)."""
    time.sleep(STEP_SLEEP_S)
    if trainer.rank == 0:
        with (Path(trainer.run_dir) / "steps.log").open("a") as f:
            f.write(f"{step} {trainer.epoch} {os.getpid()}\n")


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


def config(out: Path, name: str, epochs: int) -> dict[str, Any]:
    return {
        "model": {"name": "ae", "arch": "mlp", "hidden": [32], "latent_dim": 4},
        "data": {"name": "shapes", "n": 2048, "size": 16, "val_fraction": 0.1},
        "trainer": {"epochs": epochs, "batch_size": 32, "seed": 0, "checkpoint_every": 1, "keep_checkpoints": 2},
        "scaling": {"num_workers": 2, "max_failures": 3, "start_timeout_s": 300},
        "run": {"name": name, "output_dir": str(out), "resume": "never"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


def read_steps(run_dir: Path) -> list[tuple[int, int, int]]:
    path = run_dir / "steps.log"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line being written when read is skipped
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


def one_run(out: Path, index: int, epochs: int, steps_per_epoch: int, rng: random.Random) -> dict[str, Any]:
    name = f"kill-{index}"
    run_dir = out / name
    rank = index % 2
    target = rng.randrange(steps_per_epoch + 1, (epochs - 1) * steps_per_epoch + steps_per_epoch // 2)
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = engine.fit(config(out, name, epochs))
        except BaseException as exc:  # reported in the table, not raised from the thread
            outcome["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    t0 = time.monotonic()
    thread.start()
    killed_pid, kill_time, killed_step, restart_s = None, 0.0, 0, None
    while thread.is_alive():
        steps = read_steps(run_dir)
        if killed_pid is None and steps and steps[-1][0] >= target:
            killed_pid = int((run_dir / "pids" / str(rank)).read_text())
            os.kill(killed_pid, signal.SIGKILL)
            kill_time, killed_step = time.monotonic(), steps[-1][0]
        elif killed_pid is not None and steps and steps[-1][2] != steps[0][2]:
            restart_s = time.monotonic() - kill_time  # the restarted group's first step
            break
        time.sleep(0.01)
    thread.join(timeout=600)
    wall = time.monotonic() - t0

    steps = read_steps(run_dir)
    result = outcome.get("result")
    row: dict[str, Any] = {"run": index, "rank": rank, "wall": wall, "error": outcome.get("error")}
    if killed_pid is None:
        row["error"] = row["error"] or RuntimeError("the run ended before the kill")
        return row
    # Rank 0's log: the steps of the first attempt, then those of the restarted group (new PIDs).
    # Steps are counted from the log's first value: ``done`` = optimizer steps completed.
    first_step, first_pid = steps[0][0], steps[0][2]
    before = [step - first_step + 1 for step, _, pid in steps if pid == first_pid]
    after = [step - first_step + 1 for step, _, pid in steps if pid != first_pid]
    row |= {"killed_step": killed_step - first_step + 1, "recovery_s": restart_s}
    if after:
        resumed_from = after[0] - 1  # the steps in the checkpoint the new group loaded
        row |= {"resumed_from": resumed_from, "lost_steps": max(before) - resumed_from}
        row["lost_intervals"] = row["lost_steps"] / steps_per_epoch
    if result is not None:
        with (run_dir / "metrics.csv").open(newline="") as f:
            row["csv_epochs"] = [round(float(r["epoch"])) for r in csv.DictReader(f)]
        assert result.checkpoint is not None
        row["final_checkpoint_epoch"] = checkpoint.load(result.checkpoint)["epoch"]
    row["recovered"] = (
        result is not None
        and row.get("final_checkpoint_epoch") == epochs
        and row.get("csv_epochs") == list(range(1, epochs + 1))
        and row.get("lost_intervals") is not None
        and row["lost_intervals"] <= 1.0
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of kill steps")
    args = p.parse_args(argv)

    # Workers import this module as the probe plugin.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(HERE))
    os.environ["GENTRAIN_PLUGINS"] = PROBE
    os.environ["GENTRAIN_DISABLE_PLUGINS"] = "plots,tensorboard,sample_grids"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # A local cluster of its own, with room for a restarted worker group while the old one is torn down.
    ray.init(address="local", num_cpus=4, logging_level="ERROR", log_to_driver=False, include_dashboard=True)
    n_train = round(2048 * 0.9)
    steps_per_epoch = n_train // (32 * 2)
    rng = random.Random(args.seed)
    rows = []
    print(
        f"{args.runs} runs: AE on shapes, 2 Ray workers, {args.epochs} epochs of {steps_per_epoch} steps, "
        f"a checkpoint every epoch ({steps_per_epoch} steps); one worker SIGKILLed mid-epoch per run",
        flush=True,
    )
    print("steps completed when the worker was killed, in the checkpoint the restarted group loaded, and redone:")
    print(f"{'run':>3} {'rank':>4} {'killed at':>9} {'resumed at':>10} {'lost':>14} {'restart s':>9} {'wall s':>6}  ok")
    with tempfile.TemporaryDirectory(prefix="gentrain-faults-") as out:
        for i in range(args.runs):
            row = one_run(Path(out), i, args.epochs, steps_per_epoch, rng)
            rows.append(row)
            lost = f"{row['lost_steps']} st = {row['lost_intervals']:.2f}" if row.get("lost_steps") is not None else "?"
            restart = f"{row['recovery_s']:.1f}" if row.get("recovery_s") is not None else "?"
            ok = "yes" if row.get("recovered") else f"NO {row.get('error')!r}"
            print(
                f"{i:>3} {row['rank']:>4} {row.get('killed_step', '?'):>9} {row.get('resumed_from', '?'):>10} "
                f"{lost:>14} {restart:>9} {row['wall']:>6.1f}  {ok}",
                flush=True,
            )
    ray.shutdown()
    recovered = sum(bool(r.get("recovered")) for r in rows)
    lost = [r["lost_intervals"] for r in rows if r.get("lost_intervals") is not None]
    restarts = [r["recovery_s"] for r in rows if r.get("recovery_s") is not None]
    print(f"\n{recovered}/{len(rows)} recovered")
    if lost:
        print(
            f"work lost per run (checkpoint intervals): median {statistics.median(lost):.2f}, max {max(lost):.2f} "
            "(allowed: 1.00)"
        )
    if restarts:
        print(
            f"kill to restarted group training (s): median {statistics.median(restarts):.1f}, max {max(restarts):.1f}"
        )
    return 0 if recovered == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
