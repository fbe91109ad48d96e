"""Devices and distribution: the ``tf.distribute`` strategy a :class:`Trainer` trains under.

* ``auto`` with one device (the default): no strategy, TensorFlow's default placement;
* ``mirrored``: one replica per local GPU (``devices=N``: the first N), or, on a machine without
  GPUs, one per logical CPU device (``devices=N`` splits the CPU into N, to try the distributed
  path: it is not faster); ``auto`` with ``devices`` > 1 means ``mirrored``;
* ``multi-worker``: ``MultiWorkerMirroredStrategy`` across machines, each a worker of the
  cluster that the ``TF_CONFIG`` environment variable describes (:func:`dask_tf_configs` makes
  one per worker of a Dask cluster).

The global batch (the data module's ``batch_size``) is split across the replicas by Keras. The
model must be built under :meth:`Distribution.scope` (``Trainer.scope()``), so its variables are
mirrored; a strategy's ``trainable`` flags are then set once and hold on every replica, as a
re-compile under the scope follows each change. Only the chief writes checkpoints and files.

TensorFlow is imported on use: :class:`Distribution` reads ``TF_CONFIG`` for :attr:`is_chief`
without it. Splitting the CPU must happen before TensorFlow initialises its devices
(:meth:`Distribution.start`, first thing in a job).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import UsageError
from ..fitvalues import DISTRIBUTIONS, parse_devices

log = logging.getLogger(__name__)

# One strategy per set of devices in a process: two strategies over the same devices would
# number their collective operations alike, and the second one's all-reduces would meet the
# first one's
_STRATEGIES: dict[tuple[str, ...], Any] = {}


def tf_config() -> dict[str, Any] | None:
    """The parsed ``TF_CONFIG`` (None when unset); a malformed one is a usage error."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"TF_CONFIG is not a cluster description ({exc}); it must be JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
            '"index": 0}}'
        ) from None
    return dict(config)


def split_cpu(count: int) -> None:
    """Split the CPU into ``count`` logical devices (before TensorFlow initialises them)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise UsageError(
                f"TensorFlow's devices were set up before the CPU could be split into {count} "
                f"(it has {have}); choose the devices first thing in a process (a new "
                "`transferkit finetune --devices N`, or Trainer(devices=N) before any model is "
                "built)"
            ) from None


class Distribution:
    """``kind`` (``auto``, ``mirrored``, ``multi-worker``) over ``devices`` (``auto`` or N): the
    ``tf.distribute`` strategy, made on first use (:meth:`start`)."""

    def __init__(self, kind: str = "auto", devices: Any = "auto") -> None:
        if kind not in DISTRIBUTIONS:
            raise UsageError(f"unknown distribution {kind!r}; use one of {list(DISTRIBUTIONS)}")
        self.devices = parse_devices(devices)
        if kind == "auto":
            kind = "mirrored" if (self.devices or 1) > 1 else "auto"
        self.kind = kind
        self.config = tf_config() if kind == "multi-worker" else None
        if kind == "multi-worker" and self.config is None:
            raise UsageError(
                "multi-worker training needs TF_CONFIG (the cluster and this worker's task) in "
                "the environment of each worker, or --scheduler ADDRESS (a Dask cluster)"
            )
        self._strategy: Any = None
        self._started = False

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints and files (always, unless it is a worker of
        a multi-worker cluster other than the chief: task ``chief``, else worker 0)."""
        if self.config is None:
            return True
        task = self.config["task"]
        if task["type"] == "chief":
            return True
        return task["type"] == "worker" and int(task["index"]) == 0 and (
            "chief" not in self.config["cluster"]
        )  # fmt: skip

    @property
    def task(self) -> str:
        """``worker 1`` (multi-worker) or ``local``."""
        if self.config is None:
            return "local"
        return f"{self.config['task']['type']} {self.config['task']['index']}"

    def start(self) -> Any:
        """The ``tf.distribute`` strategy (None for ``auto`` on one device), made once."""
        if self._started:
            return self._strategy
        self._started = True
        if self.kind == "auto":
            return None
        import tensorflow as tf

        if self.kind == "multi-worker":
            keras_multi_worker_fixes()
        devices = ("multi-worker",) if self.kind == "multi-worker" else self._local_devices()
        if devices not in _STRATEGIES:
            _STRATEGIES[devices] = (
                tf.distribute.MultiWorkerMirroredStrategy()
                if self.kind == "multi-worker"
                else tf.distribute.MirroredStrategy(list(devices))
            )
        self._strategy = _STRATEGIES[devices]
        log.info(
            f"training on {self.replicas} replica(s) ({self.kind}, {self.task}): "
            f"{', '.join(self._strategy.extended.worker_devices)}"
        )
        return self._strategy

    def _local_devices(self) -> tuple[str, ...]:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            count = self.devices or len(gpus)
            if count > len(gpus):
                raise UsageError(f"--devices {count}: this machine has {len(gpus)} GPU(s)")
            return tuple(f"/gpu:{i}" for i in range(count))
        count = self.devices or 1
        split_cpu(count)
        return tuple(f"/cpu:{i}" for i in range(count))

    @property
    def replicas(self) -> int:
        strategy = self.start()
        return 1 if strategy is None else int(strategy.num_replicas_in_sync)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Build and compile models inside: their variables are then the strategy's."""
        strategy = self.start()
        if strategy is None:
            yield
            return
        with strategy.scope():
            yield

    def check_model(self, keras_model: Any) -> None:
        """Refuse a model built outside :meth:`scope` (its variables would not be mirrored)."""
        strategy = self.start()
        if strategy is None:
            return
        owner = getattr(keras_model, "_distribute_strategy", None)
        if owner is not strategy:
            raise UsageError(
                f"the model was built outside the Trainer's {self.kind} strategy; build it "
                "inside `with trainer.scope():` (Trainer(devices=..., strategy=...))"
            )


def keras_multi_worker_fixes() -> None:
    """Two fixes to Keras 3's TensorFlow trainer (3.15) under ``MultiWorkerMirroredStrategy``,
    made once in a process that trains multi-worker: its ``fit`` builds the model on the mean of
    the first distributed batch (``strategy.reduce`` of a ``PerReplica`` fails eagerly there),
    and it averages each step's scalar logs over ``axis=0`` (no axis 0 in a scalar). Here the
    build takes the local replica's batch (only its shapes matter) and scalars are averaged over
    the replicas."""
    import keras
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer.reduce_per_replica, "multi_worker_fixed", False):
        return
    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
            strategy
        ):

            def mean(value: Any) -> Any:
                local = strategy.experimental_local_results(value)[0]
                return strategy.reduce("MEAN", value, axis=0 if local.shape.rank else None)

            return keras.tree.map_structure(mean, values)
        return original(values, strategy, reduction)

    def local_batch(strategy: Any, batch: Any) -> Any:
        def first(value: Any) -> Any:
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        return keras.tree.map_structure(first, batch)

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = local_batch(self.distribute_strategy, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    reduce_per_replica.multi_worker_fixed = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build


def as_distribution(strategy: Any, devices: Any) -> Distribution:
    """A :class:`Distribution` from the Trainer's ``strategy`` (a name or one) and ``devices``."""
    if isinstance(strategy, Distribution):
        return strategy
    return Distribution(str(strategy or "auto"), devices)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def tf_configs(addresses: Sequence[str]) -> list[str]:
    """One ``TF_CONFIG`` per worker (worker ``i`` at ``addresses[i]``, ``host:port``)."""
    cluster = {"worker": list(addresses)}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(len(addresses))
    ]
