"""The end of a pass over an input pipeline: tf.data's autotune model on (TensorFlow's default)
vs off (what every transferkit pipeline uses), interleaved on the same images.

    python bench/bench_pipeline_teardown.py               # 300 images, 6 passes of each
    python bench/bench_pipeline_teardown.py --passes 10

Each pass runs MobileNetV2 (``weights=none``, 224 px) over the images as extraction does, then
drops the iterator. The iterator's destructor joins the autotune model's background thread; the
benchmark prints each pass's streaming time and destructor time, how many destructors took more
than 0.5 s, and the ratio of the median images/s (off / on, including the destructor).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from bench_extract import make_images  # noqa: E402


def one_pass(dataset, forward) -> tuple[int, float, float]:
    """Images, seconds streaming, seconds in the iterator's destructor."""
    t0 = time.perf_counter()
    it = iter(dataset)
    n = 0
    for x, _ in it:
        forward(x).numpy()
        n += len(x)
    t1 = time.perf_counter()
    del it
    return n, t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="number of images")
    parser.add_argument("--passes", type=int, default=6, help="passes of each variant")
    args = parser.parse_args()

    import tensorflow as tf

    from transferkit import pool, registry
    from transferkit.images import open_source
    from transferkit.jobs.extract import _forward_fn
    from transferkit.pipeline import image_dataset

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; N={args.n}")
    net = pool(
        registry.backbone("mobilenet-v2").factory(weights="none", input_size=(224, 224)), "avg"
    )
    forward = _forward_fn(net.model, net.input_size)
    forward(np.zeros((32, 224, 224, 3), np.float32))
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        make_images(Path(tmp), args.n)
        source = open_source(tmp)

        def dataset(autotune: bool):
            ds = image_dataset(
                source, input_size=net.input_size, batch_size=32, preprocess=net.preprocess
            )
            if autotune:  # TensorFlow's default
                options = tf.data.Options()
                options.autotune.enabled = True
                ds = ds.with_options(options)
            assert ds.options().autotune.enabled is autotune
            return ds

        rates: dict[str, list[float]] = {"autotune on": [], "autotune off": []}
        stalls = dict.fromkeys(rates, 0)
        for k in range(args.passes):
            for name in rates:
                n, stream, teardown = one_pass(dataset(name == "autotune on"), forward)
                rates[name].append(n / (stream + teardown))
                stalls[name] += teardown > 0.5
                print(
                    f"pass {k + 1} {name:12s} {n / stream:6.1f} img/s streaming, "
                    f"iterator destructor {teardown:5.2f} s",
                    flush=True,
                )
    print()
    for name, values in rates.items():
        print(
            f"{name:12s} median {statistics.median(values):6.1f} img/s with the destructor; "
            f"destructor > 0.5 s in {stalls[name]} of {args.passes} passes"
        )
    ratio = statistics.median(rates["autotune off"]) / statistics.median(rates["autotune on"])
    print(f"off / on (median): {ratio:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
