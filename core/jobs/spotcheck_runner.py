"""The spot-check's local runner: every (features x classifier) pair in a worker process.

A :class:`FeatureSource` is one column of the grid (a store and its name), a :class:`Task` one
pair; :func:`run_pair` fits and scores it in whatever process calls it (and never raises: a
failure is a ``failed`` row). :func:`run_grid` runs a list of tasks on at most ``jobs``
long-lived worker processes started with multiprocessing's forkserver method (a clean process,
not a fork of a parent that may hold TensorFlow threads), each limited to one BLAS/OpenMP thread
so that results do not depend on the degree of parallelism. A pair that runs past ``timeout``
seconds is killed with its worker (and whatever the worker started) and becomes a ``timeout``
row; a worker that dies is a ``failed`` row; either is replaced by a fresh worker. The workers
come from a :class:`WorkerPool`, which the job starts before it reads the stores, after starting
the fork server itself first thing (:func:`start_fork_server`), so that the fork server's imports
overlap that work. Built-in classifiers travel to the workers as their factories
(:func:`builtin_factory`): a worker loads no plugins unless some were registered at run time.
Pairs are handed out by falling ``Task.cost`` (the classifier's ``cost`` hint x the split's
size), so that the grid does not end on one long fit.

A script with an ``if __name__ == "__main__":`` guard is imported by the workers as usual (so
classes it defines unpickle there); a plain script without one is not
(:func:`_unguarded_main_hidden`): importing it would run the spot-check again inside the worker.

The split a task fits on is a folder of ``.npy`` files (:func:`save_split`, :func:`load_split`)
that workers memory-map. Plugins registered at run time in the calling process
(:func:`runtime_plugins`) are registered in each worker too (:func:`register_runtime_plugins`).
The Dask runner (``spotcheck_dask``) uses the same tasks, :func:`run_pair` and
:func:`failed_row`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import estimators, registry
from ..allocator import ALLOCATOR_ENV, LIMIT_ENV
from ..metrics import score

# the fields of a report row, in the order of the CSV file
ROW_FIELDS = (
    "backbone",
    "classifier",
    "status",
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "ece",
    "fit_seconds",
    "predict_seconds",
    "error",
)
# passed to each worker as they are when a grid starts, beside the TRANSFERKIT_ ones: a user's
# own classifier may run TensorFlow there (see core/allocator.py)
WORKER_ENV = (ALLOCATOR_ENV, LIMIT_ENV)
# Imported once by the fork server, so that each worker starts with them loaded (TensorFlow is
# never among them: workers only fit classifiers).
PRELOAD = [
    "numpy",
    "pandas",
    "sklearn.base",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "sklearn.svm",
    "sklearn.neighbors",
    "sklearn.tree",
    "sklearn.ensemble",
    "sklearn.naive_bayes",
    "sklearn.neural_network",
    "sklearn.metrics",
    "sklearn.model_selection",
    "threadpoolctl",
    "transferkit.estimators",
    "transferkit.metrics",
    "transferkit.plugin_manager",
    "transferkit.registry",
]


@dataclass
class FeatureSource:
    """One column of the grid: a store and the name its rows carry."""

    name: str
    path: str
    extracted: bool = False


@dataclass
class Task:
    index: int
    source: str
    classifier: str
    data: str  # folder of the source's memory-mapped split
    seed: int
    threads: int = 1
    estimator: Any = None  # a caller's own estimator (cloned in the worker), else built by name
    cost: float = 1.0  # an estimate of the pair's time, relative to others (longest run first)
    # a built-in classifier's factory (what ``estimators.build`` calls for the name): a worker
    # builds it without loading the plugins
    factory: Any = None


def set_thread_env(threads: int) -> None:
    """Limit the BLAS/OpenMP libraries of this process (and its children) to ``threads``."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def save_split(
    folder: Path,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
) -> Path:
    """Write a train/test split as the ``.npy`` files :func:`load_split` maps."""
    np.save(folder / "X_train.npy", np.ascontiguousarray(X_train, dtype=np.float32))
    np.save(folder / "y_train.npy", np.asarray(y_train, dtype=np.int64))
    np.save(folder / "X_test.npy", np.ascontiguousarray(X_test, dtype=np.float32))
    np.save(folder / "y_test.npy", np.asarray(y_test, dtype=np.int64))
    np.save(folder / "classes.npy", np.arange(n_classes))
    return folder


def load_split(folder: str | Path) -> dict[str, np.ndarray]:
    """The train/test split a task fits on, as written by :func:`save_split` (memory-mapped)."""
    data = Path(folder)
    return {
        "X_train": np.load(data / "X_train.npy", mmap_mode="r"),
        "y_train": np.load(data / "y_train.npy"),
        "X_test": np.load(data / "X_test.npy", mmap_mode="r"),
        "y_test": np.load(data / "y_test.npy"),
        "classes": np.load(data / "classes.npy"),
    }


def run_pair(task: Task, split: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Fit and score one pair (in whatever process calls it); never raises.

    ``split`` is the data when the caller has it in memory (Dask workers); otherwise it is read
    from ``task.data``.
    """
    import warnings

    row: dict[str, Any] = {"backbone": task.source, "classifier": task.classifier}
    try:
        from threadpoolctl import threadpool_limits

        # convergence and degenerate-feature warnings would interleave with the progress bar;
        # the row's scores say what matters
        warnings.simplefilter("ignore")

        data = split if split is not None else load_split(task.data)
        # built before the thread limit: a library the build imports (scikit-learn's SciPy
        # brings its own BLAS) is then limited too, also in the first pair of a process
        model = build_model(task)
        with threadpool_limits(limits=task.threads):
            start = time.perf_counter()
            fitted = estimators.fit(
                model, np.asarray(data["X_train"]), data["y_train"], classes=data["classes"]
            )
            fit_seconds = time.perf_counter() - start
            start = time.perf_counter()
            predicted = estimators.predict(fitted, np.asarray(data["X_test"]))
            predict_seconds = time.perf_counter() - start
        y_test = data["y_test"]
        from ..trust import ece

        proba = estimators.predict_proba(fitted, np.asarray(data["X_test"]), data["classes"])
        row.update(
            status="ok",
            **score(y_test, predicted, labels=data["classes"]),
            ece=ece(proba, y_test),
            fit_seconds=fit_seconds,
            predict_seconds=predict_seconds,
            error=None,
        )
        from sklearn.metrics import confusion_matrix

        # for the report's picture of the best pair (not a row field)
        row["confusion"] = confusion_matrix(y_test, predicted, labels=data["classes"]).tolist()
    except Exception as exc:
        row.update(empty_metrics(), status="failed", error=f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=8)
    return row


def build_model(task: Task) -> Any:
    """The unfitted estimator of a pair: the caller's own (a fresh clone), the built-in
    factory's, or the registered classifier's; seeded with ``task.seed``."""
    if task.estimator is not None:
        from ..user_objects import fresh_estimator

        return fresh_estimator(task.estimator)
    if task.factory is not None:
        return estimators.seed_estimator(task.factory(), task.seed)
    return estimators.build(task.classifier, seed=task.seed)


def builtin_factory(name: str) -> Any:
    """The factory of the classifier ``name`` when a built-in plugin registered it (a worker
    then builds it by reference, without loading every plugin), else None."""
    import pickle

    from .. import plugin_manager

    try:
        spec = registry.classifier(name)
        if not plugin_manager.is_builtin(spec.plugin):
            return None
        pickle.dumps(spec.factory)
    except Exception:  # unknown here, or not picklable: the worker builds it by name
        return None
    return spec.factory


def empty_metrics() -> dict[str, Any]:
    """The score and time fields of a row without scores, all None."""
    return {
        "accuracy": None,
        "macro_f1": None,
        "balanced_accuracy": None,
        "ece": None,
        "fit_seconds": None,
        "predict_seconds": None,
    }


def runtime_plugins() -> list[str]:
    """References (``module`` or ``module:Class``) of plugins registered in this process at run
    time (not built-in, not entry points), so that worker processes register them too."""
    from .. import plugin_manager

    pm = plugin_manager.get_plugin_manager()
    entry_points = {ep.name for ep in plugin_manager.selected_entry_points()}
    refs = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None or plugin_manager.is_builtin(name) or name in entry_points:
            continue
        if isinstance(plugin, type(os)):
            refs.append(f"{plugin.__name__}")
        else:
            cls = type(plugin)
            refs.append(f"{cls.__module__}:{cls.__qualname__}")
    return refs


def register_runtime_plugins(refs: list[str]) -> None:
    """Register in this process the plugins :func:`runtime_plugins` named in another."""
    import importlib

    from .. import plugin_manager

    pm = plugin_manager.get_plugin_manager()
    for ref in refs:
        module_name, _, qualname = ref.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in filter(None, qualname.split(".")):
            obj = getattr(obj, part)
        plugin = obj() if qualname else obj
        pm.register(plugin, name=f"runtime:{ref}")
    registry.clear_cache()


def _kill(proc: Any) -> None:
    """Kill a worker and whatever it started (its process group: e.g. the processes of an
    ``n_jobs=-1`` estimator), so that a timed-out fit leaves nothing running."""
    import signal

    with contextlib.suppress(OSError, AttributeError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    proc.join(5)


def failed_row(task: Task, status: str, error: str) -> dict[str, Any]:
    """The row of a pair that produced no scores: ``status`` is ``failed`` or ``timeout``."""
    row = {"backbone": task.source, "classifier": task.classifier, **empty_metrics()}
    row.update(status=status, error=error)
    return row


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when its parent dies: the fork server, which
    ends when the spot-check's process does, however it ends (a SIGKILL included). Without it a
    worker in a process group of its own outlives a killed spot-check until its fit is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent was gone already
            os._exit(1)


def _worker(conn: Connection, env: dict[str, str], plugins: list[str], threads: int) -> None:
    """A long-lived worker: fits the tasks it receives until it gets ``None``."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpgid(0, 0)  # a group of its own: a time-out kills the worker's children too
    _die_with_parent()
    os.environ.update(env)
    set_thread_env(threads)
    plugin_error: str | None = None
    try:
        if plugins:  # otherwise the plugins load on the first pair built by name, if any
            register_runtime_plugins(plugins)
    except Exception as exc:
        plugin_error = f"cannot load plugin in worker: {exc}"
    try:
        while (task := conn.recv()) is not None:
            if plugin_error is not None:
                conn.send(failed_row(task, "failed", plugin_error))
            else:
                conn.send(run_pair(task))
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class _Worker:
    """A worker process and the end of its pipe; ``task`` is what it is fitting, if anything."""

    def __init__(self, ctx: Any, env: dict[str, str], plugins: list[str], threads: int) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker, args=(child, env, plugins, threads), daemon=True)
        with _unguarded_main_hidden():
            self.proc.start()
        child.close()
        self.task: Task | None = None
        self.started = 0.0

    def give(self, task: Task) -> None:
        self.task, self.started = task, time.monotonic()
        self.conn.send(task)

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            _kill(self.proc)
        self.conn.close()

    def kill(self) -> None:
        _kill(self.proc)
        self.conn.close()


def _worker_env() -> dict[str, str]:
    """What each worker's environment takes from this process's, as it is now (the fork server
    may be older than a change)."""
    return {k: v for k, v in os.environ.items() if k.startswith("TRANSFERKIT_") or k in WORKER_ENV}


class WorkerPool:
    """The workers of one grid. With ``count`` > 0 they start at once in a background thread, so
    that the fork server's imports and the workers' start overlap the caller's own work (reading
    stores, writing the splits); :meth:`take` waits for them. :meth:`new` starts one more (a
    replacement); :meth:`close` stops those never taken."""

    def __init__(self, count: int = 0, threads: int = 1) -> None:
        import threading

        self.ctx = _mp_context()
        self.env = _worker_env()
        self.plugins = runtime_plugins()
        self.threads = threads
        self._ready: list[_Worker] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._start, args=(count,), name="transferkit-spotcheck-workers", daemon=True
        )
        if count > 0:
            self._thread.start()

    def _start(self, count: int) -> None:
        try:
            for _ in range(count):
                self._ready.append(self.new())
        except BaseException as exc:  # raised again by take()
            self._error = exc

    def new(self) -> _Worker:
        return _Worker(self.ctx, self.env, self.plugins, self.threads)

    def _wait(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def take(self, count: int) -> list[_Worker]:
        """``count`` started workers (those started early first); the others are stopped."""
        self._wait()
        if self._error is not None:
            error, self._error = self._error, None
            self.close()
            raise error
        workers, extra = self._ready[:count], self._ready[count:]
        self._ready = []
        for worker in extra:
            worker.stop()
        while len(workers) < count:
            workers.append(self.new())
        return workers

    def close(self) -> None:
        self._wait()
        for worker in self._ready:
            worker.stop()
        self._ready = []


def _is_unguarded_script(path: str) -> bool:
    """Whether the script at ``path`` has no top-level ``if __name__ == "__main__":`` test."""
    import ast

    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return False
    return True


@contextlib.contextmanager
def _unguarded_main_hidden() -> Iterator[None]:
    """While a worker starts: hide the main module's file from multiprocessing when it is a plain
    script without a ``__main__`` guard, so that the worker (and the forkserver) does not import
    it and run the caller's spot-check again."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if (
        main is None
        or not path
        or getattr(main, "__spec__", None) is not None  # `python -m module`: imported by name
        or not _is_unguarded_script(path)
    ):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def start_fork_server() -> None:
    """Start the fork server now, without waiting for it: its imports run while the caller goes
    on (choosing the grid, reading the stores), and the workers fork from it when it is up."""
    ctx = _mp_context()
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    with _unguarded_main_hidden():
        forkserver.ensure_running()


def _mp_context() -> Any:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # Import the heavy, safe libraries once in the server; every worker forks from it.
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_grid(
    tasks: list[Task],
    *,
    jobs: int,
    timeout: float | None,
    isolate: bool = True,
    on_row: Any = None,
    progress: bool = True,
    pool: WorkerPool | None = None,
    longest_first: bool = True,
) -> list[dict[str, Any]]:
    """Run every task; rows come back in task order whatever order they finish in.

    ``isolate=False`` runs the tasks one after another in this process (no time-out): the
    plain serial loop the benchmark compares against. Otherwise the workers come from ``pool``
    (started early by the caller; closed here) or are started now, and with ``longest_first``
    the pairs are handed out by falling ``cost`` (ties in task order), so that the grid does
    not end on one long fit while the other workers idle.
    """
    from tqdm import tqdm

    rows: dict[int, dict[str, Any]] = {}
    bar = tqdm(
        total=len(tasks), desc="spot-check", unit="fit", file=sys.stderr, disable=not progress
    )

    def done(task: Task, row: dict[str, Any]) -> None:
        rows[task.index] = row
        bar.update(1)
        bar.set_postfix_str(f"{task.source} x {task.classifier}: {row['status']}", refresh=False)
        if on_row is not None:
            on_row(row)

    if not isolate:
        if pool is not None:
            pool.close()
        for task in tasks:
            done(task, run_pair(task))
        bar.close()
        return [rows[t.index] for t in tasks]

    if pool is None:
        pool = WorkerPool(threads=tasks[0].threads if tasks else 1)
    pending = deque(sorted(tasks, key=lambda t: -t.cost) if longest_first else tasks)
    # Workers live for the whole grid (a process start per pair would cost more than most
    # fits); one that times out or dies is replaced by a fresh one.
    workers: list[_Worker] = []
    try:
        workers = pool.take(min(jobs, len(tasks)))
        while pending or any(w.task is not None for w in workers):
            for i, worker in enumerate(workers):
                if worker.task is None and pending:
                    try:
                        worker.give(pending[0])
                        pending.popleft()
                    except (OSError, BrokenPipeError):
                        worker.kill()
                        workers[i] = pool.new()
            busy = {w.conn: w for w in workers if w.task is not None}
            for item in wait(list(busy), timeout=0.2):
                worker = busy[cast(Connection, item)]
                task = cast(Task, worker.task)
                try:
                    row: dict[str, Any] = worker.conn.recv()
                except (EOFError, OSError):
                    worker.proc.join(5)
                    code = worker.proc.exitcode
                    row = failed_row(task, "failed", f"worker process died (exit code {code})")
                    worker.kill()
                    workers[workers.index(worker)] = pool.new()
                worker.task = None
                done(task, row)
            now = time.monotonic()
            for i, worker in enumerate(workers):
                late = worker.task
                if late is not None and timeout is not None and now - worker.started > timeout:
                    worker.kill()
                    workers[i] = pool.new()
                    done(
                        late, failed_row(late, "timeout", f"killed after {timeout:g}s (--timeout)")
                    )
    finally:
        for worker in workers:
            if worker.task is None:
                worker.stop()
            else:
                worker.kill()
        pool.close()
        bar.close()
    return [rows[t.index] for t in tasks]
