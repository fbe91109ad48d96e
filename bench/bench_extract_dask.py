"""Extraction on a Dask cluster vs one process, and what each shard costs the client, the scheduler
and the store.

    python bench/bench_extract_dask.py                 # N=400, efficientnet-lite0 at 224 px
    python bench/bench_extract_dask.py --n 128 --repeat 1           # a quick check

It prints, for ``transferkit.extract`` into a Zarr store (``runtime=keras``, 32-bit):

* ``single``: one process (its default threads: every core);
* ``cluster``: a local Dask cluster of ``--jobs`` worker processes, one thread each
  (what ``--scheduler local --jobs N`` starts), the images cut into shards of ``--shard-rows``;

each as the streaming rate once the network is built (the single process's
``images_per_second``; the cluster's second run on the same warm workers, whose backbones are
built already), and the whole command's wall time in a fresh process (``transferkit extract``,
cold: TensorFlow's import, the network's build, the cluster's start). The ratio is cluster /
single. Then the per-shard costs measured here:

* ``scheduler``: the round trip of a task that does nothing (submit, schedule, run, result),
  over many such tasks on the same cluster: the scheduler's and the comm's cost per shard;
* ``client``: cutting one shard's sub-source out of the run's order and pickling the task (what
  the client does per shard besides waiting), and the progress bar's update;
* ``store``: :func:`transferkit.store.write_shard` of one shard (rows, skipped files, mark) on
  this machine's disk, the client's ``finish`` per shard (reading marks and skipped files), and
  the rate at which ``finish`` moves rows when a skipped file leaves a gap;

and, from those, the shard rate each part could sustain, against the rate at which a cluster of
M machines finishes shards. Run it on a quiet machine: the figures depend on the load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from bench_extract import make_images  # noqa: E402


def _noop(i: int) -> int:
    return i


def _cpu() -> str:
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model} ({os.cpu_count()} CPUs; {', '.join(shown) or 'no avx2'})"


def cold_command(args: argparse.Namespace, folder: Path, out: Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "transferkit", "extract", str(folder), "-b", args.backbone]
    cmd += ["-o", str(out), "--overwrite", "--input-size", str(args.input_size), "--json"]
    cmd += ["--batch-size", str(args.batch_size), "--runtime", "keras", "--no-progress", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def warm_rates(args: argparse.Namespace, folder: Path, tmp: Path) -> dict[str, Any]:
    import transferkit

    common = {
        "backbone": args.backbone,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "runtime": "keras",
        "overwrite": True,
        "progress": False,
    }
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=args.jobs, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster)
    singles, clusters = [], []
    try:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        for _ in range(args.repeat + 1):  # interleaved; the cluster's first run warms it
            singles.append(
                transferkit.extract(folder, out=tmp / "single.zarr", **common)["images_per_second"]
            )
            clusters.append(
                transferkit.extract(
                    folder,
                    out=tmp / "cluster.zarr",
                    scheduler=cluster.scheduler_address,
                    shard_rows=args.shard_rows,
                    threads=threads,
                    **common,
                )
            )
        # the scheduler's round trip per task, over many tasks
        client.gather(client.map(_noop, range(50), pure=False))
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(args.tasks), pure=False))
        per_task = (time.perf_counter() - t0) / args.tasks
        t0 = time.perf_counter()
        for i in range(50):
            client.submit(_noop, i, pure=False).result()
        one_by_one = (time.perf_counter() - t0) / 50
    finally:
        client.close()
        cluster.close()
    warm_shards = [r for c in clusters[1:] for r in c["shard_results"]]
    shard_seconds = [r["seconds"] for r in warm_shards]
    return {
        "single_ips": max(singles),
        "singles": singles,
        "cluster_ips": max(c["images_per_second"] for c in clusters[1:]),
        "clusters": [c["images_per_second"] for c in clusters],
        "shards": clusters[-1]["shards"],
        "shard_rows": clusters[-1]["shard_rows"],
        "feature_dim": clusters[-1]["feature_dim"],
        "shard_seconds_median": float(np.median(shard_seconds)),
        "first_batch_median": float(np.median([r["first_batch_seconds"] for r in warm_shards])),
        "write_median": float(np.median([r["write_seconds"] for r in warm_shards])),
        "scheduler_task_ms": per_task * 1e3,
        "scheduler_roundtrip_ms": one_by_one * 1e3,
        "image_kib": float(np.mean([p.stat().st_size for p in folder.rglob("*.jpg")])) / 1024,
    }


def client_costs(folder: Path, shard_rows: int, n_images: int) -> dict[str, float]:
    """Per shard, on the client: the sub-source and the pickled task, and the bar's update."""
    from tqdm import tqdm

    from transferkit.images import ImageRecord, ImageSource, open_source
    from transferkit.jobs.extract import _order
    from transferkit.jobs.extract_dask import WorkerBuild
    from transferkit.recipe import FeatureRecipe

    real = open_source(folder)
    # a run of n_images (the real records repeated), as a big run's client holds it
    records = [real.records[i % len(real)] for i in range(n_images)]
    source = ImageSource(
        [ImageRecord(r.path, r.label) for r in records], real.label_names, location=str(folder)
    )
    order = _order(len(source), True, 0)
    features = FeatureRecipe.create("efficientnet-lite0", input_size=224)
    recipe = WorkerBuild(features, "keras", 1, 32, 1)
    shards = len(source) // shard_rows
    t0 = time.perf_counter()
    size = 0
    for s in range(shards):
        sub = source.subset(order[s * shard_rows : (s + 1) * shard_rows].tolist())
        size += len(pickle.dumps((recipe, s, sub, "/shared/out.zarr", None, False)))
    per_shard = (time.perf_counter() - t0) / shards
    bar = tqdm(total=len(source), file=open(os.devnull, "w"), smoothing=0.1)  # noqa: SIM115
    t0 = time.perf_counter()
    for _ in range(shards):
        bar.update(shard_rows)
        bar.set_postfix(skipped=0, refresh=False)
    bar_ms = (time.perf_counter() - t0) / shards * 1e3
    bar.close()
    return {"task_ms": per_shard * 1e3, "task_kib": size / shards / 1024, "bar_ms": bar_ms}


def store_costs(tmp: Path, shard_rows: int, dim: int, shards: int) -> dict[str, float]:
    """write_shard per shard, finish per shard (no gap), and finish's move rate (a gap)."""
    from transferkit.store import ShardedStoreWriter, backend_for, write_shard

    rng = np.random.default_rng(0)
    x = rng.normal(size=(shard_rows, dim)).astype(np.float32)
    y = rng.integers(0, 5, size=shard_rows)
    paths = [f"/shared/photos/class_{i % 5}/image_{i:07d}.jpg" for i in range(shard_rows)]
    results = {}
    for gap in (False, True):
        out = tmp / f"store-{gap}.zarr"
        writer = ShardedStoreWriter(
            backend_for(out),
            str(out),
            feature_dim=dim,
            label_names=[f"class_{i}" for i in range(5)],
            metadata={"backbone": "bench"},
            mode="overwrite",
            compression="gzip",
            images=shards * shard_rows,
            shard_rows=shard_rows,
        )
        t0 = time.perf_counter()
        for s in range(shards):
            rows = shard_rows - 1 if (gap and s == 0) else shard_rows
            skipped = [[paths[-1], "bad"]] if rows < shard_rows else []
            write_shard(out, s, x[:rows], y[:rows], paths[:rows], skipped)
        write = (time.perf_counter() - t0) / shards
        t0 = time.perf_counter()
        writer.finish()
        finish = time.perf_counter() - t0
        if gap:
            moved = (shards - 1) * shard_rows * (dim * 4 + 8 + len(paths[0]))
            results["move_mib_s"] = moved / (1 << 20) / finish
            results["finish_gap_s"] = finish
        else:
            results["write_ms"] = write * 1e3
            results["finish_ms_per_shard"] = finish / shards * 1e3
    results["shard_mib"] = shard_rows * dim * 4 / (1 << 20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="number of images")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2, help="local workers (one thread each)")
    parser.add_argument("--shard-rows", type=int, default=100, help="images per shard here")
    parser.add_argument("--repeat", type=int, default=2, help="warm runs of each (best kept)")
    parser.add_argument("--tasks", type=int, default=500, help="no-op tasks timed")
    parser.add_argument("--cold", action="store_true", help="also time fresh commands")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"CPU: {_cpu()}; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "images"
        make_images(folder, args.n)
        warm = warm_rates(args, folder, tmp)
        cold = {}
        if args.cold:
            cold["single_s"] = cold_command(args, folder, tmp / "c1.zarr")
            cold["cluster_s"] = cold_command(
                args, folder, tmp / "c2.zarr", "--scheduler", "local", "--jobs", str(args.jobs)
            )
        client = client_costs(folder, 1024, 200 * 1024)
        store = store_costs(tmp, 1024, warm["feature_dim"], 32)
    ratio = warm["cluster_ips"] / warm["single_ips"]
    print(
        f"{args.backbone} at {args.input_size} px, N={args.n}, batch {args.batch_size}, shards of "
        f"{warm['shard_rows']} ({warm['shards']} shards), {args.jobs} workers x 1 thread"
    )
    print(f"single process     : {warm['single_ips']:7.1f} img/s  (runs {warm['singles']})")
    print(f"cluster (warm)     : {warm['cluster_ips']:7.1f} img/s  (runs {warm['clusters']})")
    print(f"ratio cluster/single: {ratio:.2f}")
    if cold:
        print(
            f"cold commands      : single {cold['single_s']:.1f} s, "
            f"--scheduler local {cold['cluster_s']:.1f} s"
        )
    shard_s = warm["shard_seconds_median"]
    print(
        f"one warm shard of {warm['shard_rows']} images on one worker: {shard_s:.2f} s, of which "
        f"{warm['first_batch_median']:.2f} s to its pipeline's first batch and "
        f"{warm['write_median']:.2f} s writing it (medians)"
    )
    print(
        f"per shard of 1024 images: scheduler {warm['scheduler_task_ms']:.2f} ms per task "
        f"(many in flight; {warm['scheduler_roundtrip_ms']:.1f} ms for one alone); client "
        f"{client['task_ms']:.2f} ms to cut and pickle the task ({client['task_kib']:.0f} KiB) "
        f"+ {client['bar_ms']:.3f} ms progress; store: write_shard {store['write_ms']:.0f} ms "
        f"on the worker ({store['shard_mib']:.1f} MiB of features, gzip), finish "
        f"{store['finish_ms_per_shard']:.2f} ms on the client; a gap moves "
        f"{store['move_mib_s']:.1f} MiB/s"
    )
    # the caps: what M machines like this one need of each part, per second
    per_machine = warm["single_ips"]  # one machine like this one, every core
    per_worker = per_machine / args.jobs
    fixed = shard_s - warm["shard_rows"] / per_worker
    print(
        f"a worker's fixed cost per shard (its input pipeline, the store's open and mark): "
        f"about {fixed:.2f} s (a warm shard's time minus its images at 1/{args.jobs} of the "
        f"single rate)"
    )
    client_ms = client["task_ms"] + client["bar_ms"]
    image_kib = warm["image_kib"]
    for machines in (1, 10, 100):
        shards = machines * per_machine / 1024  # shards of 1024 finished per second
        print(
            f"  {machines:3d} machines: {shards:6.2f} shards/s of 1024 -> client busy "
            f"{shards * client_ms / 10:.2f} %, scheduler busy "
            f"{shards * warm['scheduler_task_ms'] / 10:.2f} %, shared storage reads "
            f"{shards * 1024 * image_kib / 1024:.0f} MiB/s of images and writes "
            f"{shards * store['shard_mib']:.0f} MiB/s of features (before compression)"
        )
    rows = 1_000_000
    print(
        f"  at the end of a run of {rows} images: finish reads {rows // 1024} shard marks "
        f"({rows // 1024 * store['finish_ms_per_shard'] / 1000:.1f} s here); a skipped file in "
        f"the first shard makes it move every later row ({rows * warm['feature_dim'] * 4 >> 20} "
        f"MiB at {store['move_mib_s']:.0f} MiB/s: "
        f"{(rows * warm['feature_dim'] * 4 >> 20) / store['move_mib_s'] / 60:.0f} min)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")
    print(json.dumps({"warm": warm, "cold": cold, "client": client, "store": store}))


if __name__ == "__main__":
    main()
