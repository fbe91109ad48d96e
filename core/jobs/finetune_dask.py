"""``finetune --distribute multi-worker --scheduler ADDRESS``: a multi-worker fine-tune on the
workers of a Dask cluster, one replica each.

The client asks each worker for a free port, makes one ``TF_CONFIG`` per worker (its host, that
port, its task index: worker 0 is the chief) and runs the fine-tune on every worker at once, each
in a new Python process with its ``TF_CONFIG`` (TensorFlow reads it when it starts, and a Dask
worker may have TensorFlow running already). The chief writes the run folder, which must be on
storage every worker sees; the other workers write nothing. Returns the chief's summary.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import TransferkitError, UsageError
from ..options import FinetuneOptions

log = logging.getLogger(__name__)

LOCAL_WORKERS = 2  # the workers of `--scheduler local` unless --devices says


def finetune_on_cluster(
    images: Any, *, backbone: Any, out: str | Path, options: FinetuneOptions
) -> dict[str, Any]:
    from ..cluster import close, connect
    from ..trainer.distribute import free_port, tf_configs

    if not isinstance(backbone, str):
        raise UsageError("--scheduler needs a backbone name: each worker builds the backbone")
    if options.callbacks:
        raise UsageError("--scheduler runs the fine-tune in other processes; drop the callbacks")
    scheduler = str(options.scheduler)
    client = connect(scheduler, options.devices or LOCAL_WORKERS)
    try:
        workers = sorted(client.scheduler_info()["workers"])
        if len(workers) < 1:
            raise UsageError(f"the Dask cluster at {scheduler} has no workers")
        ports = client.run(free_port, workers=workers)
        addresses = [f"{urlparse(w).hostname}:{ports[w]}" for w in workers]
        each = options.replace(scheduler=None, distribute="multi-worker", devices=None)
        run = uuid.uuid4().hex[:8]
        log.info(f"multi-worker fine-tune on {len(workers)} Dask workers: {', '.join(addresses)}")
        futures = [
            client.submit(
                run_worker,
                images,
                backbone,
                str(out),
                each.values(),
                config,
                key=f"finetune-worker-{i}-{run}",
                workers=[worker],
                allow_other_workers=False,
                pure=False,
            )  # fmt: skip
            for i, (worker, config) in enumerate(zip(workers, tf_configs(addresses), strict=True))
        ]
        results = client.gather(futures)
    finally:
        close(client, scheduler)
    chief = next(r for r in results if r.get("chief") is not False)
    return {**chief, "workers": addresses}


def run_worker(
    images: Any, backbone: str, out: str, values: dict[str, Any], tf_config: str
) -> dict[str, Any]:
    """On a Dask worker: the fine-tune in a new process with ``TF_CONFIG``; its summary."""
    proc = subprocess.run(
        [sys.executable, "-m", "transferkit.jobs.finetune_dask"],
        input=pickle.dumps((images, backbone, out, values)),
        env={**os.environ, "TF_CONFIG": tf_config},
        capture_output=True,
    )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["(no output)"]
        task = json.loads(tf_config)["task"]
        raise TransferkitError(
            f"the fine-tune of worker {task['index']} failed (exit {proc.returncode}): {lines[-1]}"
        )
    return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))


def _main() -> None:
    from .finetune import finetune

    images, backbone, out, values = pickle.loads(sys.stdin.buffer.read())
    summary = finetune(images, backbone=backbone, out=out, options=FinetuneOptions(**values))
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    _main()
