"""The console of a Ray fit: gentrain's own lines, printed by the driver, and Ray's noise kept off it.

Ray forwards every worker's output to the driver with a ``(RayTrainWorker
pid=...)`` prefix, and its controller logs every worker failure with a full
traceback. Instead::

    driver (fit_ray)                          Ray Train controller       rank 0
    ----------------                          --------------------       ------
    "starting Ray ..."                                                   progress plugin: emit(line)
    DriverConsole: a queue actor, and a       FailureNotes.after_        -> "gentrain.console" logger
      thread printing what arrives   <------    exception: one line  <-  -> the queue (install_worker_console)
    "2 worker(s) ready after 9.1s"              per failure

- Workers hand their console lines (the ``gentrain.console`` logger of
  :mod:`plugins.callbacks.progress`) to a :class:`ray.util.queue.Queue`; the
  driver prints them as they are, with no prefix.
- On each worker failure one line says which worker, why and what happens
  next: ``worker 1 died (SYSTEM_ERROR); restarting from checkpoint step=12,
  attempt 2 of 4``. Ray Train's own log lines (and their tracebacks) stay in
  Ray's session log files: its console level is ``CRITICAL``
  (:data:`RAY_TRAIN_CONSOLE_LEVEL`), its log files keep every level.
- A Tune trial passes ``"off"``: its lines are dropped, the search prints its own table.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: The logger the progress plugin writes gentrain's console lines to (see ``plugins/callbacks/progress.py``).
CONSOLE_LOGGER = "gentrain.console"
#: Ray Train's console log level under gentrain; its session log files keep every level.
RAY_TRAIN_CONSOLE_LEVEL = "CRITICAL"
#: ``console`` value of a trainer whose workers' lines are dropped (a Tune trial).
OFF = "off"
#: Set by ``gentrain tune`` in each trial's environment: ``off`` drops the trial's own console lines.
TRIAL_CONSOLE_ENV = "GENTRAIN_TRIAL_CONSOLE"


def say(line: str) -> None:
    """A line of the driver's own."""
    print(f"[gentrain] {line}", flush=True)


def ray_logs_dir() -> str | None:
    """The session log folder of the connected Ray (where Ray Train's tracebacks go), if known."""
    try:
        import ray

        node = ray._private.worker._global_node
        return str(Path(node.get_session_dir_path()) / "logs") if node is not None else None
    except Exception:  # private API: without it the line just does not name the folder
        return None


class DriverConsole:
    """A queue the workers and the controller put console lines in, and a driver thread printing them."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue: Any = Queue(actor_options={"num_cpus": 0})
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="gentrain-console", daemon=True)

    def start(self) -> DriverConsole:
        self._thread.start()
        return self

    def show(self, item: Any) -> None:
        kind, text = item if isinstance(item, tuple) and len(item) == 2 else ("line", item)
        if kind == "ready":
            say(f"{text} ready after {time.perf_counter() - self.t0:.1f}s")
        else:
            print(text, flush=True)

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue actor went away: nothing more will arrive
                return
            self.show(item)

    def close(self) -> None:
        """Stop the thread, print what is still queued, remove the queue actor."""
        from ray.util.queue import Empty

        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            while True:
                try:
                    self.show(self.queue.get_nowait())
                except Empty:
                    break
        with contextlib.suppress(Exception):
            self.queue.shutdown()


@contextlib.contextmanager
def driver_console() -> Iterator[DriverConsole]:
    console = DriverConsole().start()
    try:
        yield console
    finally:
        console.close()


class _ToDriver(logging.Handler):
    """Hands each record of the ``gentrain.console`` logger to the driver's queue; never stops training."""

    def __init__(self, queue: Any) -> None:
        super().__init__(logging.INFO)
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.queue.put_nowait(("line", record.getMessage()))


def install_worker_console(console: Any, rank: int, world_size: int) -> None:
    """In a Train worker: send the progress lines to the driver (``console`` is its queue), or drop them (``"off"``).

    ``None`` leaves them printed (Ray then prefixes them). Rank 0 also says the group is ready.
    """
    if console is None:
        return
    log = logging.getLogger(CONSOLE_LOGGER)
    for handler in list(log.handlers):
        log.removeHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if console == OFF:
        log.addHandler(logging.NullHandler())
        return
    log.addHandler(_ToDriver(console))
    if rank == 0:
        with contextlib.suppress(Exception):
            console.put_nowait(("ready", f"{world_size} worker(s)"))


# ---------------------------------------------------------------------------
# one line per worker failure
# ---------------------------------------------------------------------------

_EXIT_TYPE = re.compile(r"Worker exit type: (\w+)")
_STEP = re.compile(r"step=(\d+)")


def _died(error: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(error)}
    return bool(names & {"ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "RayActorError"})


def _chain(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        # Ray's wrappers: RayTaskError.cause, Train's WorkerHealthCheckFailedError.health_check_failure.
        inner = getattr(current, "cause", None) or getattr(current, "health_check_failure", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return out


def describe_failure(error: BaseException, root_cause: Callable[[BaseException], BaseException]) -> str:
    """``died (SYSTEM_ERROR)`` for a worker process that ended, ``raised RuntimeError: ...`` for an exception."""
    if _died(error):
        found = _EXIT_TYPE.search(str(error))
        return f"died ({found.group(1) if found else type(root_cause(error)).__name__})"
    root = root_cause(error)
    lines = str(root).strip().splitlines()
    first = lines[0] if lines else ""
    if len(first) > 120:
        first = first[:117] + "..."
    return f"raised {type(root).__name__}" + (f": {first}" if first else "")


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    """The step of the newest checkpoint file in ``checkpoint_dir`` (what a restart resumes from)."""
    from engine import checkpoint as ckpt

    with contextlib.suppress(OSError):
        latest = ckpt.latest(checkpoint_dir)
        found = _STEP.search(latest.name) if latest is not None else None
        if found:
            return int(found.group(1))
    return None


def failure_line(
    failures: int,
    worker_exceptions: Mapping[int, BaseException],
    *,
    max_failures: int,
    checkpoint_dir: Path,
    root_cause: Callable[[BaseException], BaseException],
    retryable: Callable[[BaseException], bool],
) -> str:
    """The one line for the ``failures``-th failure of a worker group (1 for the first)."""
    ranks = sorted(worker_exceptions, key=lambda r: (not _died(worker_exceptions[r]), r))
    rank = ranks[0]
    error = worker_exceptions[rank]
    what = f"worker {rank} {describe_failure(error, root_cause)}"
    if len(ranks) > 1:
        what += f" (and {len(ranks) - 1} other worker(s) failed with it)"
    if not all(retryable(e) for e in worker_exceptions.values()):
        return f"[gentrain] {what}; not restarted: a restart would repeat this error"
    if failures > max_failures:
        return f"[gentrain] {what}; no restarts left (scaling.max_failures={max_failures})"
    step = checkpoint_step(checkpoint_dir)
    start = f"from checkpoint step={step}" if step is not None else "from the start (no checkpoint yet)"
    return f"[gentrain] {what}; restarting {start}, attempt {failures + 1} of {max_failures + 1}"


def failure_notes(
    console: Any,
    *,
    max_failures: int,
    checkpoint_dir: Path,
    root_cause: Callable[[BaseException], BaseException],
    retryable: Callable[[BaseException], bool],
) -> Any:
    """A Ray Train callback (run in the controller) putting :func:`failure_line` on the driver's console."""
    from ray.train.v2.api.callback import UserCallback

    logs = ray_logs_dir()

    class FailureNotes(UserCallback):
        def __init__(self) -> None:
            self.failures = 0

        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            self.failures += 1
            line = failure_line(
                self.failures,
                worker_exceptions,
                max_failures=max_failures,
                checkpoint_dir=checkpoint_dir,
                root_cause=root_cause,
                retryable=retryable,
            )
            if self.failures == 1 and logs:
                line += f"\n[gentrain]   (Ray's tracebacks are in its logs: {logs})"
            try:
                console.put_nowait(("line", line))
            except Exception:
                print(line, file=sys.stderr, flush=True)

    FailureNotes.__qualname__ = FailureNotes.__name__ = "GentrainFailureNotes"
    return FailureNotes()


# ---------------------------------------------------------------------------
# gentrain tune: a compact table of its own
# ---------------------------------------------------------------------------


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_table(metric: str, mode: str, epochs: int) -> Any:
    """A Ray Tune callback (run in the driver): one short row per trial event, or per trial redrawn on a terminal.

    ``gentrain tune`` shows this instead of Tune's status tables (those come with
    ``--verbose 2``): a row when a trial starts, after each epoch but its last,
    and when it ends (done, stopped early by the scheduler, or failed), with the
    trial's metric, the best value so far and its searched values.
    """
    from ray.tune import Callback

    better = min if mode == "min" else max

    class TuneTable(Callback):
        def __init__(self) -> None:
            self.best: float | None = None
            self.t0 = time.perf_counter()
            # On a terminal: one row per trial, redrawn in place; otherwise a row per event.
            self.rows: dict[str, str] = {}
            self.drawn = 0

        def _show(self, trial_id: str, line: str) -> None:
            if not sys.stdout.isatty():
                print(line, flush=True)
                return
            self.rows[trial_id] = line
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            sys.stdout.write(up + "".join(f"\x1b[2K{row}\n" for row in self.rows.values()))
            sys.stdout.flush()
            self.drawn = len(self.rows)

        def _row(self, trial: Any, status: str, result: Mapping[str, Any] | None = None) -> None:
            result = result or {}
            epoch = result.get("epoch")
            value = result.get(metric)
            if isinstance(value, (int, float)):
                self.best = float(value) if self.best is None else better(self.best, float(value))
            params = "  ".join(f"{k}={_number(v)}" for k, v in sorted((trial.config or {}).items()))
            where = (
                f"epoch {int(epoch)}/{epochs}" if isinstance(epoch, (int, float)) else " " * (7 + len(str(epochs)) * 2)
            )
            shown = f"{metric}={_number(float(value))}" if isinstance(value, (int, float)) else ""
            best = f"best={_number(self.best)}" if self.best is not None and shown else ""
            elapsed = format_elapsed(time.perf_counter() - self.t0)
            line = f"  {elapsed:>6}  {trial.trial_id:<12} {status:<8} {where}  {shown:<20} {best:<16} {params}"
            self._show(str(trial.trial_id), line.rstrip())

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._row(trial, "started")

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            if result.get("epoch", 0) < epochs:  # the last epoch's row is the trial's "done"
                self._row(trial, "running", result)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            last = trial.last_result or {}
            self._row(trial, "done" if last.get("epoch", 0) >= epochs else "stopped", last)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._row(trial, "failed", trial.last_result)

    return TuneTable()


def format_elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


__all__ = [
    "CONSOLE_LOGGER",
    "OFF",
    "RAY_TRAIN_CONSOLE_LEVEL",
    "TRIAL_CONSOLE_ENV",
    "DriverConsole",
    "describe_failure",
    "driver_console",
    "failure_line",
    "failure_notes",
    "install_worker_console",
    "say",
    "tune_table",
]
