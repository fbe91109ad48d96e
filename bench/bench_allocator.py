"""Allocator benchmark: TensorFlow's BFC CPU allocator (transferkit's default) against the
allocator TensorFlow ships with, each run in a fresh process, interleaved.

Parts: the default fine-tune (``warmup-unfreeze``, ``--epochs 1 --epochs 1``) of the digits as
224 px PNGs (wall, user, sys, peak RSS, minor faults, test accuracy), extraction of the digits
with each runtime (keras, openvino, litert: images per second of the job, and the process's
figures) and ``predict`` with the fine-tuned model. Settings: ``shipped``
(``TF_CPU_ALLOCATOR_USE_BFC=false``, TensorFlow's own default), ``bfc`` (the variable left to
transferkit, which sets it to ``true``), ``bfc-limit-MB`` (BFC with
``TF_CPU_BFC_MEM_LIMIT_IN_MB=MB``), each optionally with ``+onednn0``
(``TF_ENABLE_ONEDNN_OPTS=0``: TensorFlow's own kernels rather than oneDNN's, as the test suite
runs). Converted models are made once before timing, so the openvino and litert rows time
extraction, not conversion.

    .venv/bin/python bench/bench_allocator.py [--per-class 50] [--extract-images 1000]
        [--repeats 2] [--settings shipped,bfc] [--parts finetune,extract,predict]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORK = Path(os.environ.get("TRANSFERKIT_BENCH_DIR", Path(tempfile.gettempdir()) / "tk-bench"))
BACKBONE = "efficientnet-lite0"
RUNTIMES = ("keras", "openvino", "litert")
ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"
LIMIT_ENV = "TF_CPU_BFC_MEM_LIMIT_IN_MB"


def setting_env(name: str) -> dict[str, str]:
    """The environment of a child for a setting (the allocator's variables removed first)."""
    env = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR_ENV, LIMIT_ENV)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TRANSFERKIT_CACHE"] = str(WORK / "cache")
    allocator, _, onednn = name.partition("+")
    if allocator == "shipped":
        env[ALLOCATOR_ENV] = "false"
    elif allocator.startswith("bfc-limit-"):
        env[LIMIT_ENV] = allocator.removeprefix("bfc-limit-")
    elif allocator != "bfc":
        raise SystemExit(f"unknown setting {name}: shipped, bfc or bfc-limit-MB[+onednn0]")
    if onednn == "onednn0":  # TensorFlow's own kernels instead of oneDNN's (the test suite's)
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    elif onednn:
        raise SystemExit(f"unknown setting {name}: the only suffix is +onednn0")
    return env


# ---------------------------------------------------------------------- in the child


def child(part: str, args: dict[str, Any]) -> dict[str, Any]:
    from transferkit import api

    start = time.perf_counter()
    if part == "finetune":
        summary = api.finetune(
            args["images"],
            backbone=BACKBONE,
            out=args["out"],
            epochs=[1, 1],
            overwrite=True,
            progress=False,
        )
        result = {"test_accuracy": summary["test_accuracy"]}
    elif part.startswith("extract-"):
        summary = api.extract(
            args["images"],
            backbone=BACKBONE,
            out=args["out"],
            runtime=part.removeprefix("extract-"),
            overwrite=True,
            progress=False,
        )
        result = {"rows": summary["rows"]}
    elif part == "predict":
        summary = api.predict(args["model"], [args["images"]])
        result = {"rows": len(summary["predictions"])}
    else:
        raise SystemExit(f"unknown part {part}")
    result["job_seconds"] = time.perf_counter() - start
    result["allocator"] = os.environ.get(ALLOCATOR_ENV)
    return result


# ---------------------------------------------------------------------- in the parent


def run(part: str, setting: str, args: dict[str, Any]) -> dict[str, Any]:
    """One child process: its result, wall seconds and resource use (``wait4``)."""
    out = WORK / "result.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", part, "--child-args", json.dumps(args)]
    command += ["--child-out", str(out)]
    start = time.perf_counter()
    with open(WORK / "alloc-child.log", "ab") as log:  # TensorFlow's start-up lines
        proc = subprocess.Popen(
            command, env=setting_env(setting), stdout=subprocess.DEVNULL, stderr=log
        )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{part} under {setting} failed (exit code {proc.returncode})")
    result = json.loads(out.read_text())
    result.update(
        wall=wall,
        user=usage.ru_utime,
        sys=usage.ru_stime,
        rss_gb=usage.ru_maxrss / 1e6,
        faults_m=usage.ru_minflt / 1e6,
    )
    return result


def subset(images: Path, folder: Path, per_class: int | None) -> Path:
    """The first ``per_class`` images of each class of ``images`` (all when None), copied once."""
    if not folder.exists():
        for label in sorted(p for p in images.iterdir() if p.is_dir()):
            files = sorted(label.iterdir())[:per_class]
            (folder / label.name).mkdir(parents=True)
            for f in files:
                shutil.copy(f, folder / label.name / f.name)
    return folder


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=50, help="fine-tune images per class")
    parser.add_argument("--extract-images", type=int, default=1000, help="about, for extraction")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", default="shipped,bfc")
    parser.add_argument("--parts", default="finetune,extract,predict")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--child")
    parser.add_argument("--child-args")
    parser.add_argument("--child-out")
    args = parser.parse_args()
    if args.child:
        result = child(args.child, json.loads(args.child_args))
        Path(args.child_out).write_text(json.dumps(result))
        return

    from transferkit.jobs.demo import write_digits

    WORK.mkdir(parents=True, exist_ok=True)
    digits = Path(write_digits(WORK / "digits")["images"])
    tune_images = subset(digits, WORK / f"alloc-tune-{args.per_class}", args.per_class)
    extract_images = subset(
        digits, WORK / f"alloc-extract-{args.extract_images}", max(1, args.extract_images // 10)
    )
    settings = args.settings.split(",")
    parts = []
    for part in args.parts.split(","):
        parts += [f"extract-{r}" for r in args.runtimes.split(",")] if part == "extract" else [part]
    model = WORK / "alloc-finetune-shipped" / "model.keras"
    print(f"load before: {loadavg()}; {os.cpu_count()} cores")
    for part in parts:  # conversions made once, and a model for predict
        if part in ("extract-openvino", "extract-litert"):
            warm = subset(digits, WORK / "alloc-extract-warm", 2)
            run(part, "shipped", {"images": str(warm), "out": str(WORK / "warm.h5")})
    if "predict" in parts and "finetune" not in parts and not model.exists():
        run("finetune", "shipped", {"images": str(tune_images), "out": str(model.parent)})

    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        order = settings if repeat % 2 == 0 else settings[::-1]
        for part in parts:
            for setting in order:
                job: dict[str, Any] = {"images": str(extract_images)}
                if part == "finetune":
                    job = {"images": str(tune_images), "out": str(WORK / f"alloc-{part}-{setting}")}
                elif part.startswith("extract-"):
                    job["out"] = str(WORK / f"alloc-{part}-{setting}.h5")
                else:
                    job["model"] = str(model)
                result = run(part, setting, job)
                results.setdefault((part, setting), []).append(result)
                print(f"  {part:17} {setting:14} {describe(part, result)}", flush=True)
    print(f"load after: {loadavg()}")
    print("\nmedians (wall, user, sys in s; peak RSS in GB; minor faults in millions):")
    for part in parts:
        base = statistics.median(r["wall"] for r in results[(part, settings[0])])
        for setting in settings:
            rows = results[(part, setting)]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "allocator"}
            wall = med["wall"]
            print(f"  {part:17} {setting:14} {describe(part, med)}  ratio {base / wall:.2f}x")


def describe(part: str, r: dict[str, Any]) -> str:
    text = (
        f"wall {r['wall']:6.1f} user {r['user']:6.1f} sys {r['sys']:5.1f} "
        f"rss {r['rss_gb']:.2f} faults {r['faults_m']:5.2f}"
    )
    if "test_accuracy" in r:
        text += f" test acc {r['test_accuracy']:.4f}"
    if "rows" in r:
        text += f" {r['rows'] / r['job_seconds']:6.1f} img/s"
    return text


if __name__ == "__main__":
    main()
