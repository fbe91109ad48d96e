"""``transferkit serve`` on loopback vs batch ``transferkit predict``, same images, same runtime.

    python bench/bench_serve.py                         # N=128 JPEGs, keras, concurrency 1, 8, 32
    python bench/bench_serve.py --n 64 --runtimes keras,openvino

The JPEGs are ``bench_extract.py``'s (crops of scikit-image photographs, 256-640 px), one class per
photograph. A logistic regression is trained on efficientnet-lite0 features of ``--train`` of them
(224 px). Then, for each runtime:

* ``predict``: images/s of ``transferkit.predict(model, images, runtime=...)`` over the N images,
  network already built (inside ``reuse.kept()``, as the server has it), best of ``--repeat``,
  measured before the first concurrency and after each one (the machine drifts: each
  concurrency is compared with the ``predict`` rates measured just before and just after it);
* ``serve cN``: a real server process (``transferkit serve --runtime ...``) answering N raw-body
  POSTs from an aiohttp client with N requests kept in flight at once (concurrency 1, 8, 32):
  images/s, p50 and p99 latency in ms, the mean batch the server ran, and the ratio to the
  mean of the two ``predict`` rates around it (target at concurrency 32: at least 0.8).

The client shares the machine with the server (loopback), so its own CPU per request is taken
from the server's cores: aiohttp (its HTTP parser in C) spends about 0.2 ms per request where
httpx spent about 3 ms, a sixth of what the server needs per image. ``--client httpx`` runs the
httpx client instead. The load average before and after is printed; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_extract import make_images  # noqa: E402

BACKBONE = "efficientnet-lite0"


def load() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def train_model(root: Path, n_train: int) -> Path:
    import transferkit

    folder = root / "train"
    make_images(folder, n_train, seed=1)
    transferkit.extract(folder, backbone=BACKBONE, out=root / "f.h5", progress=False)
    result = transferkit.train(
        root / "f.h5", classifier="logistic-regression", out=root / "model.skops"
    )
    return Path(result["model_path"])


def predict_rate(model: Path, paths: list[str], runtime: str, repeat: int) -> float:
    import transferkit
    from transferkit.reuse import kept

    best = 0.0
    with kept():
        transferkit.predict(model, paths[:8], runtime=runtime, batch_size=32)  # builds, warms
        for _ in range(repeat):
            started = time.perf_counter()
            result = transferkit.predict(model, paths, runtime=runtime, batch_size=32)
            seconds = time.perf_counter() - started
            assert all(p["status"] == "ok" for p in result["predictions"])
            best = max(best, len(paths) / seconds)
    return best


def start_server(model: Path, runtime: str, max_batch: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "transferkit", "serve", str(model), "--port", "0",
               "--runtime", runtime, "--max-batch", str(max_batch)]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if " at http://" in line:
            return process, line.split(" at ")[1].split()[0]
    raise RuntimeError(f"the server did not start (exit {process.wait()})")


class Client:
    """One HTTP client library's session, ``concurrency`` keep-alive connections: aiohttp's or
    httpx's."""

    def __init__(self, kind: str, concurrency: int) -> None:
        self.kind, self.concurrency = kind, concurrency

    async def __aenter__(self) -> Client:
        if self.kind == "aiohttp":
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.concurrency)
            timeout = aiohttp.ClientTimeout(total=120)
            self.session: Any = aiohttp.ClientSession(connector=connector, timeout=timeout)
        else:
            import httpx

            limits = httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            )
            self.session = httpx.AsyncClient(limits=limits, timeout=120)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await (self.session.close() if self.kind == "aiohttp" else self.session.aclose())

    async def post(self, url: str, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "image/jpeg"}
        if self.kind == "aiohttp":
            async with self.session.post(url, data=body, headers=headers) as answer:
                answer.raise_for_status()
                return dict(await answer.json())
        answer = await self.session.post(url, content=body, headers=headers)
        answer.raise_for_status()
        return dict(answer.json())

    async def get(self, url: str) -> dict[str, Any]:
        if self.kind == "aiohttp":
            async with self.session.get(url) as answer:
                return dict(await answer.json())
        return dict((await self.session.get(url)).json())


async def load_test(
    url: str, bodies: list[bytes], concurrency: int, client_kind: str = "aiohttp"
) -> dict[str, Any]:
    latencies: list[float] = []
    queue = list(range(len(bodies)))
    async with Client(client_kind, concurrency) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                started = time.perf_counter()
                await client.post(f"{url}/predict", bodies[i])
                latencies.append(time.perf_counter() - started)

        # one warm request, then the timed run
        await client.post(f"{url}/predict", bodies[0])
        first = await client.get(f"{url}/health")
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        last = await client.get(f"{url}/health")
    ms = np.asarray(latencies) * 1000
    return {
        "images_per_s": len(bodies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": (last["images"] - first["images"])
        / max(1, last["batches"] - first["batches"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=128, help="images per run")
    parser.add_argument("--train", type=int, default=60, help="training images")
    parser.add_argument("--runtimes", default="keras")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    args = parser.parse_args()
    print(f"load before: {load()}, client {args.client}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        model = train_model(root, args.train)
        paths = [str(p) for p in make_images(root / "images", args.n, seed=0)]
        bodies = [Path(p).read_bytes() for p in paths]
        for runtime in args.runtimes.split(","):
            rates = [predict_rate(model, paths, runtime, args.repeat)]
            print(f"{runtime:9s} {'predict':19s} {rates[0]:7.1f} images/s", flush=True)
            measured = []
            process, url = start_server(model, runtime, args.max_batch)
            try:
                for c in (int(v) for v in args.concurrency.split(",")):
                    measured.append((c, asyncio.run(load_test(url, bodies, c, args.client))))
                    rates.append(predict_rate(model, paths, runtime, args.repeat))
                    after = f"predict (after c{c})"
                    print(f"{runtime:9s} {after:19s} {rates[-1]:7.1f} images/s", flush=True)
            finally:
                process.terminate()
                process.wait(60)
            for k, (c, m) in enumerate(measured):
                baseline = (rates[k] + rates[k + 1]) / 2
                ratio = m["images_per_s"] / baseline
                print(
                    f"{runtime:9s} serve c{c:<3d}      {m['images_per_s']:7.1f} images/s  "
                    f"p50 {m['p50_ms']:7.1f} ms  p99 {m['p99_ms']:7.1f} ms  "
                    f"x{ratio:.2f} of predict  (mean batch {m['mean_batch']:.1f})",
                    flush=True,
                )
                rows.append({"runtime": runtime, "concurrency": c, **m, "ratio": ratio,
                             "predict_around": [rates[k], rates[k + 1]]})  # fmt: skip
                if c == 32:
                    met = "met" if ratio >= 0.8 else "NOT met"
                    print(f"{runtime:9s} target at c32: at least 0.8x of predict: {met} "
                          f"(x{ratio:.3f})")  # fmt: skip
    print(f"load after: {load()}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
