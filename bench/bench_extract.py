"""Extraction throughput per inference runtime and precision: transferkit.extract end to end vs
the runtime's forward-only rate vs the decode-bound rate, against keras in the same run; the
classic per-image loop; peak memory.

    python bench/bench_extract.py                       # N=400, efficientnet-lite0 and mobilenet-v2
    python bench/bench_extract.py --n 64 --repeat 1 --no-rss      # a quick check (a few minutes)

For each backbone at 224 px, and each runtime (``keras``, ``openvino``, ``litert``; plus
``openvino`` bf16 where the CPU has native bf16), each in a fresh process, it prints:

* ``forward``: forward-only images/s on preprocessed tensors already in memory (the runtime's
  ceiling, with its default threads: all cores);
* ``e2e``: end-to-end images/s of ``transferkit.extract(runtime=..., precision=...)`` (decode +
  resize + preprocess + forward + HDF5 writes, streaming rate after the model is built), with the
  runtime's default threads and with the thread split of ``inference.thread_split``;
* ``vs_keras``: e2e / keras e2e of the same run (targets: best 32-bit >= 1.8, bf16 >= 3.5);
* ``of_bound``: e2e / min(forward, decode-bound rate) (target >= 0.85);
* ``peak_rss_mib``: the peak resident memory of that process;
* ``slice``: the rows per call of a converting runtime's network (``plugins/runtimes.py``:
  ``SLICE_ROWS``, 4 by default); each converting runtime also runs once with whole batches
  (``TRANSFERKIT_SLICE_ROWS=0``, slice ``whole``), forward-only and end to end, as the baseline
  of the slicing;

plus the decode-bound rate (the input pipeline alone, no network, all cores) and the decode cost
in core-ms per image, and the classic loop (``keras.utils.load_img`` per image, ``model.predict``
per batch, buffered h5py writes). With ``--rss`` (default on) it runs the default (``auto``)
extraction of N and of 4N images in fresh processes and prints their peak memory, which should
stay flat. Converted models are cached in a temporary folder: the first run of a runtime
converts (not timed: the streaming rate starts once the model is ready).

XLA stays off (CPU). Run it on a quiet machine: the figures depend on the load (printed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")


# ---------------------------------------------------------------------------- images


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs: random crops of scikit-image photographs, 256-640 px on the long side."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
    paths = []
    for i in range(n):
        k = i % len(sources)
        arr = sources[k]
        h, w = arr.shape[:2]
        scale = rng.uniform(0.5, 1.0)
        ch, cw = int(h * scale), int(w * scale)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(arr[y : y + ch, x : x + cw])
        side = int(rng.integers(256, 641))
        ratio = side / max(crop.size)
        crop = crop.resize((max(1, int(crop.size[0] * ratio)), max(1, int(crop.size[1] * ratio))))
        target = folder / PHOTOS[k] / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, quality=90)
        paths.append(target)
    return sorted(paths)


def write_list(paths: list[Path], repeat: int, out: Path) -> Path:
    """A CSV list naming each image ``repeat`` times (4N rows from N files, for the memory run)."""
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for _ in range(repeat):
            for p in paths:
                writer.writerow([str(p), p.parent.name])
    return out


# ---------------------------------------------------------------------------- the rates


def end_to_end(
    folder: Path,
    backbone: str,
    weights: str,
    batch: int,
    out: Path,
    runtime: str = "auto",
    precision: str = "32",
    threads: int | None = None,
) -> dict[str, Any]:
    import transferkit

    summary = transferkit.extract(
        folder,
        backbone=backbone,
        weights=weights,
        out=out,
        overwrite=True,
        batch_size=batch,
        input_size=224,
        progress=False,
        runtime=runtime,
        precision=precision,
        threads=threads,
    )
    return summary


def _batches(folder: Path, net: Any, batch: int, n: int) -> list[Any]:
    import tensorflow as tf

    from transferkit.images import open_source
    from transferkit.pipeline import image_dataset

    source = open_source(folder)
    keep = min(n, 8 * batch)
    ds = image_dataset(
        source,
        np.arange(keep),
        input_size=net.input_size,
        batch_size=batch,
        preprocess=net.preprocess,
    )
    return [tf.constant(x).numpy() for x, _ in ds]


def forward_only(
    folder: Path, backbone: str, weights: str, batch: int, n: int, runtime: str, precision: str
) -> float:
    """Forward-only rate of ``runtime`` on preprocessed tensors held in memory (same images)."""
    from transferkit import inference, pool, registry

    net = pool(registry.backbone(backbone).factory(weights=weights, input_size=(224, 224)), "avg")
    batches = _batches(folder, net, batch, n)
    forward = inference.build_forward(
        net, backbone=backbone, runtime=runtime, precision=precision, batch_size=batch
    )
    forward(batches[0])  # warm, as extract does before its timer
    done, i = 0, 0
    t0 = time.perf_counter()
    while done < n:
        x = batches[i % len(batches)]
        take = min(len(x), n - done)
        forward(x[:take])
        done += take
        i += 1
    return n / (time.perf_counter() - t0)


def decode_bound(folder: Path, batch: int) -> float:
    """The input pipeline alone (decode, resize, preprocess; no network), all cores: images/s."""
    from transferkit import pool, registry
    from transferkit.images import open_source
    from transferkit.pipeline import image_dataset

    net = pool(
        registry.backbone("mobilenet-v2").factory(weights="none", input_size=(224, 224)), "avg"
    )
    source = open_source(folder)
    rates = []
    for _ in range(2):
        ds = image_dataset(
            source, input_size=(224, 224), batch_size=batch, preprocess=net.preprocess
        )
        t0 = time.perf_counter()
        count = sum(int(x.shape[0]) for x, _ in ds)
        rates.append(count / (time.perf_counter() - t0))
    return max(rates)


def classic_loop(paths: list[Path], backbone: str, weights: str, batch: int, out: Path) -> float:
    """The classic recipe: per-image load_img / img_to_array / preprocess_input, predict per
    batch, buffered h5py writes."""
    import h5py
    import keras

    from transferkit import pool, registry

    net = pool(registry.backbone(backbone).factory(weights=weights, input_size=(224, 224)), "avg")
    model = net.model
    model.jit_compile = False  # XLA off on CPU, as for transferkit
    model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)  # build outside the timer
    buffer_x: list[np.ndarray] = []
    rows = 0
    t0 = time.perf_counter()
    with h5py.File(out, "w") as f:
        feats = f.create_dataset(
            "features", (0, net.feature_dim), maxshape=(None, net.feature_dim), dtype="float32"
        )

        def write(block: np.ndarray) -> None:
            nonlocal rows
            feats.resize(rows + len(block), axis=0)
            feats[rows : rows + len(block)] = block
            rows += len(block)

        images: list[np.ndarray] = []
        for path in paths:
            img = keras.utils.load_img(path, target_size=(224, 224))
            arr = keras.utils.img_to_array(img)
            images.append(np.asarray(net.preprocess(arr)))
            if len(images) == batch:
                buffer_x.append(model.predict(np.stack(images), verbose=0))
                images = []
                if sum(len(b) for b in buffer_x) >= 1024:
                    write(np.concatenate(buffer_x))
                    buffer_x = []
        if images:
            buffer_x.append(model.predict(np.stack(images), verbose=0))
        if buffer_x:
            write(np.concatenate(buffer_x))
    return len(paths) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------- one variant


def variant(args: argparse.Namespace) -> dict[str, Any]:
    """One runtime and precision of one backbone, in this (fresh) process."""
    from transferkit import inference

    folder, out = Path(args.child_variant), Path(args.child_out)
    n = len(sorted(folder.rglob("*.jpg")))
    runtime, precision = args.runtime, args.precision
    forwards, e2es, split = [], [], []
    cores = os.cpu_count() or 1
    threads = cores
    for _ in range(args.repeat):
        rate = forward_only(
            folder, args.backbones, args.weights, args.batch_size, n, runtime, precision
        )
        forwards.append(rate)
        # the split for this runtime's measured cost: core-ms per image of network and decoding
        threads = inference.thread_split(cores, args.decode_ms, 1000.0 * cores / max(forwards))
        e2es.append(
            end_to_end(
                folder, args.backbones, args.weights, args.batch_size, out / "e2e.h5",
                runtime, precision,
            )["images_per_second"]
        )  # fmt: skip
        if runtime != "keras" and not args.no_split:
            split.append(
                end_to_end(
                    folder, args.backbones, args.weights, args.batch_size, out / "e2e.h5",
                    runtime, precision, threads,
                )["images_per_second"]
            )  # fmt: skip
    row: dict[str, Any] = {
        "forward": round(max(forwards), 1),
        "e2e": round(max(e2es), 1),
        "e2e_split": round(max(split), 1) if split else None,
        "split_threads": threads if split else None,
        "forward_runs": [round(v, 1) for v in forwards],
        "e2e_runs": [round(v, 1) for v in e2es],
        "e2e_split_runs": [round(v, 1) for v in split],
    }
    if args.classic:
        paths = sorted(folder.rglob("*.jpg"))
        row["classic"] = round(
            max(
                classic_loop(paths, args.backbones, args.weights, args.batch_size, out / "c.h5")
                for _ in range(args.repeat)
            ),
            1,
        )
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


# ---------------------------------------------------------------------------- memory


def child(*argv: str, env: dict[str, str] | None = None) -> dict:
    """Run this script with ``argv`` in a fresh process (``env`` added to the environment);
    its last line of output, as JSON."""
    proc = subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode:
        sys.exit(f"child {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_rss(images: str, backbone: str, weights: str, batch: int, out: str) -> None:
    summary = end_to_end(Path(images), backbone, weights, batch, Path(out))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": summary["rows"], "peak_rss_mib": peak_kib / 1024}))


def measure_rss(images: Path, backbone: str, weights: str, batch: int, out: Path) -> dict:
    return child(
        "--child-rss", str(images), "--backbones", backbone, "--weights", weights,
        "--batch-size", str(batch), "--child-out", str(out),
    )  # fmt: skip


# ---------------------------------------------------------------------------- main


def variants(cpu_bf16: str) -> list[tuple[str, str, str]]:
    """(runtime, precision, slice rows: "" the default, "0" whole batches)."""
    found = [("keras", "32", "")]
    converting = [("openvino", "32"), ("litert", "32")]
    if not cpu_bf16:
        converting.append(("openvino", "bf16"))
    for runtime, precision in converting:
        found += [(runtime, precision, ""), (runtime, precision, "0")]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="number of images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbones", default="efficientnet-lite0,mobilenet-v2")
    parser.add_argument(
        "--weights",
        default="",
        help="weights for every backbone (default: efficientnet-lite0 "
        "its ImageNet port, the others none: speed does not depend on them)",
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each rate (best kept)")
    parser.add_argument("--no-rss", action="store_true", help="skip the N vs 4N memory runs")
    parser.add_argument("--child-rss", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-variant", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-decode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="keras", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32", help=argparse.SUPPRESS)
    parser.add_argument("--decode-ms", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--classic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-split", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_variant:
        print(json.dumps(variant(args)))
        return
    if args.child_decode:
        print(json.dumps({"decode_bound": decode_bound(Path(args.child_decode), args.batch_size)}))
        return
    if args.child_rss:
        child_rss(args.child_rss, args.backbones, args.weights, args.batch_size, args.child_out)
        return

    from transferkit import inference

    cores = os.cpu_count() or 1
    cpu_bf16 = inference.native_bf16()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    print(
        f"load average before: {load:.2f} on {cores} CPUs; N={args.n}, batch {args.batch_size}, "
        f"224 px, XLA off; native bf16: {cpu_bf16 or 'yes'}"
    )
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        root = Path(tmp)
        os.environ["TRANSFERKIT_CACHE"] = str(root / "cache")  # conversions of this run only
        paths = make_images(root / "images", args.n)
        decode = child("--child-decode", str(root / "images"), "--batch-size", str(args.batch_size))
        bound = decode["decode_bound"]
        decode_ms = 1000.0 * cores / bound
        print(f"decode-bound rate {bound:.1f} img/s on {cores} cores: {decode_ms:.2f} core-ms/img")
        rows = []
        for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
            weights = args.weights or ("default" if name == "efficientnet-lite0" else "none")
            keras_e2e = None
            for runtime, precision, slice_rows in variants(cpu_bf16):
                # each variant in a fresh process: its threads, memory and models are its own
                env = {"TRANSFERKIT_SLICE_ROWS": slice_rows} if slice_rows else {}
                row = child(
                    "--child-variant", str(root / "images"), "--backbones", name,
                    "--weights", weights, "--batch-size", str(args.batch_size),
                    "--repeat", str(args.repeat), "--child-out", str(root),
                    "--runtime", runtime, "--precision", precision,
                    "--decode-ms", f"{decode_ms:.3f}",
                    *(["--classic"] if runtime == "keras" else []),
                    *(["--no-split"] if slice_rows else []),
                    env=env,
                )  # fmt: skip
                runs = {k: row.pop(k) for k in list(row) if k.endswith("_runs")}
                label = "" if runtime == "keras" else ("whole" if slice_rows == "0" else "4")
                print(json.dumps({"backbone": name, "runtime": runtime, "slice": label, **runs}))
                best = max(v for v in (row["e2e"], row["e2e_split"]) if v is not None)
                if runtime == "keras":
                    keras_e2e = best
                out = {
                    "backbone": name,
                    "runtime": runtime,
                    "precision": precision,
                    "slice": label,
                    "forward": row["forward"],
                    "e2e": row["e2e"],
                    "e2e_split": row["e2e_split"] if row["e2e_split"] is not None else "",
                    "threads": row["split_threads"] or "",
                    "vs_keras": round(best / keras_e2e, 2) if keras_e2e else "",
                    "of_bound": round(best / min(row["forward"], bound), 3),
                    "peak_rss_mib": row["peak_rss_mib"],
                    "classic": row.get("classic", ""),
                    "e2e/classic": round(best / row["classic"], 2) if row.get("classic") else "",
                }
                rows.append(out)
                print(json.dumps(out), flush=True)
            if not args.no_rss:
                small = measure_rss(
                    root / "images", name, weights, args.batch_size, root / "rss1.h5"
                )
                big = measure_rss(
                    write_list(paths, 4, root / "x4.csv"),
                    name,
                    weights,
                    args.batch_size,
                    root / "rss4.h5",
                )
                print(
                    f"{name} auto: peak RSS N {small['peak_rss_mib']:.0f} MiB, 4N "
                    f"{big['peak_rss_mib']:.0f} MiB (ratio "
                    f"{big['peak_rss_mib'] / small['peak_rss_mib']:.3f})"
                )
    print()
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    print(f"decode-bound {bound:.1f} img/s ({decode_ms:.2f} core-ms/img)")
    print(f"load average after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
