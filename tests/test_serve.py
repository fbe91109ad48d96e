"""``transferkit serve``: the routes, micro-batching, bad input and shutdown.

The application runs in this process under Starlette's ``TestClient`` (a slow client is an ASGI
``receive`` that stalls); the shutdown tests start a real server process and signal it. The
model is a logistic regression on the tiny backbone's features of PNG images.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_backbone
from cli_faults import QUIET_ENV, assert_fails_cleanly, invoke_cli, plugin_env, write_entry_points
from PIL import Image

from transferkit import api, hookimpl, plugin_manager, registry
from transferkit.options import ServeOptions
from transferkit.serving import build_app, serving, usable_cores
from transferkit.specs import RuntimeSpec

CLASSES = ("bright", "dark", "mid")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.normal((200, 50, 125)[c], 45, (32, 32, 3)).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / name / f"{i}.png")
    pm = plugin_manager.get_plugin_manager()
    pm.register(tiny_backbone, name="tiny-backbone")
    registry.clear_cache()
    try:
        api.extract(root / "images", backbone="tiny-cnn", out=root / "f.h5", progress=False)
        api.train(root / "f.h5", classifier="logistic-regression", out=root / "lr.skops")
    finally:
        pm.unregister(tiny_backbone)
        registry.clear_cache()
    paths = sorted((root / "images").rglob("*.png"))
    yield {"root": root, "model": root / "lr.skops", "paths": paths}


def png(size: tuple[int, int] = (32, 32), value: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def server(model: dict[str, Any], tiny: str) -> Iterator[Any]:
    """A TestClient on the app, with its ``served`` model; options through ``request.param``."""

    def start(**values: Any) -> Any:
        # small batches where batching is not the subject: fewer pipelines to build at start
        return _Started(model["model"], ServeOptions(**{"max_batch": 4, **values}))

    started: list[_Started] = []

    def make(**values: Any) -> Any:
        s = start(**values)
        started.append(s)
        return s.__enter__()

    try:
        yield make
    finally:
        for s in started:
            s.__exit__(None, None, None)


class _Started:
    def __init__(self, path: Path, options: ServeOptions) -> None:
        self.path, self.options = path, options

    def __enter__(self) -> tuple[Any, Any]:
        from starlette.testclient import TestClient

        self._serving = serving(self.path, self.options)
        served = self._serving.__enter__()
        self.app = build_app(served)
        self._client = TestClient(self.app)
        return self._client.__enter__(), served

    def __exit__(self, *exc: Any) -> None:
        self._client.__exit__(*exc)
        self._serving.__exit__(*exc)


def test_routes_answer_json_with_what_predict_gives(model: dict[str, Any], server: Any) -> None:
    client, served = server(top=3)
    health = {"status": "ok", "batches": 0, "images": 0, "in_flight": 0}
    assert client.get("/health").json() == health
    meta = client.get("/metadata").json()
    assert meta["label_names"] == list(CLASSES) and meta["input_size"] == [32, 32]
    assert meta["recipe"]["backbone"] == "tiny-cnn" and meta["classifier"] == "logistic-regression"
    image = model["paths"][0]
    answer = client.post(
        "/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert answer.status_code == 200
    expected = api.predict(model["model"], [str(image)], top=3)["predictions"][0]
    # every per-image field of predict but the path and status, with the same values
    assert set(answer.json()) == set(expected) - {"path", "status"}
    for key, value in answer.json().items():
        assert value == pytest.approx(expected[key]) if key != "top" else True
    assert [t["label"] for t in answer.json()["top"]] == [t["label"] for t in expected["top"]]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in model["paths"][:3]]
    several = client.post("/predict", files=files)
    assert several.status_code == 200, several.text
    rows = several.json()["predictions"]
    assert [r["name"] for r in rows] == [p.name for p in model["paths"][:3]]
    assert rows[0]["label"] == answer.json()["label"]


def test_served_answers_carry_ood_score_and_prediction_set(
    model: dict[str, Any], server: Any, tmp_path: Path
) -> None:
    from transferkit.errors import UsageError

    client, _ = server(coverage=0.9)
    assert client.get("/metadata").json()["coverage"] == 0.9
    image = model["paths"][4]
    answer = client.post("/predict", content=image.read_bytes(),
                         headers={"Content-Type": "image/png"}).json()  # fmt: skip
    expected = api.predict(model["model"], [str(image)], coverage=0.9)["predictions"][0]
    assert answer["prediction_set"] == expected["prediction_set"]
    assert answer["ood_score"] == pytest.approx(expected["ood_score"], abs=1e-6)
    assert answer["unfamiliar"] == expected["unfamiliar"] and answer["label"] in CLASSES
    bare = api.train(model["root"] / "f.h5", classifier="knn-3", out=tmp_path / "bare.skops",
                     conformal=False)["model_path"]  # fmt: skip
    with (
        pytest.raises(UsageError, match="keeps no conformal scores"),
        serving(bare, ServeOptions(max_batch=1, coverage=0.9)),
    ):
        pass
    refused = invoke_cli("serve", bare, "--coverage", "1.5")
    assert_fails_cleanly(refused, 2, "--coverage must be between 0 and 1")


def _write_kinds(folder: Path) -> list[Path]:
    """Images that take each of the input pipeline's ways: a large JPEG (decoded at a reduced
    DCT scale), a grey JPEG, a small PNG (enlarged), an RGBA PNG and an EXIF-rotated JPEG
    (both through Pillow)."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    photo = rng.integers(0, 255, (180, 300, 3), np.uint8)
    photo[:, :150] //= 3  # some structure, so that the scales differ
    Image.fromarray(photo).save(folder / "large.jpg", quality=90)
    Image.fromarray(photo[:60, :60, 0]).save(folder / "grey.jpg")
    Image.fromarray(photo[:20, :24]).save(folder / "small.png")
    rgba = np.dstack([photo[:40, :40], rng.integers(0, 255, (40, 40, 1), np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(photo[:50, :70]).save(folder / "rotated.jpg", exif=exif)
    return [folder / n for n in ("large.jpg", "grey.jpg", "small.png", "alpha.png", "rotated.jpg")]


def _post_at_once(client: Any, paths: list[Path], content_type: str) -> list[Any]:
    """Each image POSTed to /predict from a thread of its own, all at once; every answer 200."""
    answers: list[Any] = [None] * len(paths)

    def ask(i: int) -> None:
        answers[i] = client.post("/predict", content=paths[i].read_bytes(),
                                 headers={"Content-Type": content_type})  # fmt: skip

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return answers


def _same_answers(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Every per-image field of predict but the path and status, equal within 1e-3."""
    for got, want in zip(served, expected, strict=True):
        assert set(got) - {"name"} == set(want) - {"path", "status"}, (got, want)
        assert got["label"] == want["label"] and got["index"] == want["index"]
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-3)
        for top, other in zip(got.get("top", []), want.get("top", []), strict=True):
            assert top["probability"] == pytest.approx(other["probability"], abs=1e-3)
        if "ood_score" in want:
            assert got["ood_score"] == pytest.approx(want["ood_score"], abs=1e-3)
        for key in ("unfamiliar", "prediction_set"):
            assert got.get(key) == want.get(key)


def test_every_way_of_decoding_gives_predicts_answer(
    model: dict[str, Any], server: Any, tmp_path: Path
) -> None:
    client, _ = server(top=3)
    paths = _write_kinds(tmp_path / "kinds")
    files = [("images", (p.name, p.read_bytes(), "image/*")) for p in paths]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200, answer.text
    expected = api.predict(model["model"], [str(p) for p in paths], top=3)["predictions"]
    assert all(e["status"] == "ok" for e in expected)
    _same_answers(answer.json()["predictions"], expected)


@pytest.fixture(scope="module")
def finetuned(model: dict[str, Any]) -> Iterator[Path]:
    """tiny-cnn fine-tuned on the module's images (its head only), with a trust record."""
    root = model["root"]
    pm = plugin_manager.get_plugin_manager()
    pm.register(tiny_backbone, name="tiny-backbone")
    registry.clear_cache()
    try:
        api.finetune(root / "images", backbone="tiny-cnn", out=root / "run",
                     strategy="head-only", epochs=1, batch_size=8, progress=False)  # fmt: skip
    finally:
        pm.unregister(tiny_backbone)
        registry.clear_cache()
    yield root / "run" / "model.keras"


def test_a_finetuned_model_is_served_with_predicts_answers(
    model: dict[str, Any], finetuned: Path, tiny: str, tmp_path: Path
) -> None:
    from starlette.testclient import TestClient

    paths = [*model["paths"][::5], *_write_kinds(tmp_path / "kinds")[:3]]
    options = ServeOptions(max_batch=4, top=3, coverage=0.9, max_wait_ms=200)
    with serving(finetuned, options) as served, TestClient(build_app(served)) as client:
        assert client.get("/metadata").json()["classifier"].startswith("finetuned")
        answers = _post_at_once(client, paths, "image/*")
        sizes = client.app.state.batchers["batcher"].sizes
        assert sum(sizes) == len(paths) and max(sizes) > 1  # batched, within max_batch
    expected = api.predict(finetuned, [str(p) for p in paths], top=3, coverage=0.9)
    assert "ood_score" in expected["predictions"][0]
    _same_answers([a.json() for a in answers], expected["predictions"])


class CountingRuntime:
    """A runtime that counts its forward passes (the Keras model called eagerly)."""

    calls: list[int] = []

    @hookimpl
    def register_runtimes(self, register: Any) -> None:
        def factory(model: Any, **options: Any) -> Any:
            def forward(images: Any) -> Any:
                CountingRuntime.calls.append(len(images))
                return np.asarray(model(np.asarray(images), training=False))

            return forward

        register(
            RuntimeSpec(
                name="counting", description="counts calls", factory=factory, check=lambda p: ""
            )
        )


def test_concurrent_requests_share_one_forward_pass(
    model: dict[str, Any], server: Any, register_plugin: Any
) -> None:
    register_plugin(CountingRuntime(), "counting-runtime")
    client, served = server(runtime="counting", max_batch=6, max_wait_ms=3000)
    CountingRuntime.calls.clear()  # the warm-up's
    answers: list[Any] = [None] * 6

    def ask(i: int) -> None:
        data = model["paths"][i].read_bytes()
        answers[i] = client.post("/predict", content=data, headers={"Content-Type": "image/png"})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert CountingRuntime.calls == [6]  # one forward pass for the six requests
    assert served.calls == 1 and client.app.state.batchers["batcher"].sizes == [6]
    assert time.perf_counter() - started < 3.0  # a full batch does not wait for max_wait_ms


def test_each_lane_runs_a_batch_at_the_same_time() -> None:
    from transferkit.serving import Batcher

    both = threading.Barrier(2, timeout=10)  # passes only when two batches run at once
    threads: list[str] = []

    def run(images: list[Any], lane: int) -> list[dict[str, Any]]:
        threads.append(threading.current_thread().name)
        both.wait()
        return [{"value": image, "lane": lane} for image in images]

    async def ask() -> tuple[list[Any], list[int]]:
        # batches of one image, which no lane shares (see the next test): each runs whole
        batcher = Batcher(run, max_batch=1, max_wait=0.01, lanes=2)
        batcher.start()
        try:
            answers = await asyncio.gather(batcher.submit([1, 2]), batcher.submit([3, 4]))
        finally:
            await batcher.close()
        return answers, batcher.sizes

    answers, sizes = asyncio.run(ask())
    assert sizes == [1, 1, 1, 1] and len(set(threads)) == 2
    assert [[a["value"] for a in batch] for batch in answers] == [[1, 2], [3, 4]]
    assert {a["lane"] for batch in answers for a in batch} == {0, 1}


def test_a_batch_that_closes_with_lanes_free_is_shared_among_them() -> None:
    """One batch of four images and two free lanes: two halves, run at the same time, and the
    answers in the order of the images."""
    from transferkit.serving import Batcher

    both = threading.Barrier(2, timeout=10)
    parts: list[tuple[list[Any], int]] = []

    def run(images: list[Any], lane: int) -> list[dict[str, Any]]:
        parts.append((list(images), lane))
        both.wait()
        return [{"value": image, "lane": lane} for image in images]

    async def ask() -> tuple[list[Any], list[int]]:
        batcher = Batcher(run, max_batch=4, max_wait=0.05, lanes=2)
        batcher.start()
        try:
            answers = await batcher.submit([1, 2, 3, 4])
        finally:
            await batcher.close()
        return answers, batcher.sizes

    answers, sizes = asyncio.run(ask())
    assert sizes == [4]  # one batch, however many lanes ran it
    assert sorted(parts) == [([1, 2], 0), ([3, 4], 1)]
    assert [(a["value"], a["lane"]) for a in answers] == [(1, 0), (2, 0), (3, 1), (4, 1)]


def test_a_batch_answered_short_fails_its_requests_instead_of_leaving_them_waiting() -> None:
    from transferkit.serving import Batcher

    def run(images: list[Any], lane: int) -> list[dict[str, Any]]:
        return [{"value": image} for image in images[1:]]  # one answer short

    async def ask() -> None:
        batcher = Batcher(run, max_batch=4, max_wait=0.01)
        batcher.start()
        try:
            await asyncio.wait_for(batcher.submit([1, 2, 3]), timeout=10)
        finally:
            await batcher.close()

    with pytest.raises(RuntimeError, match="2 answer"):
        asyncio.run(ask())


@pytest.mark.slow
def test_a_converting_runtime_serves_on_lanes_with_predicts_answers(
    model: dict[str, Any], server: Any
) -> None:
    client, served = server(runtime="openvino", top=3, max_wait_ms=50)
    assert served.lanes == (2 if usable_cores() >= 2 else 1)
    paths = model["paths"][:8]
    answers = _post_at_once(client, paths, "image/png")
    expected = api.predict(model["model"], [str(p) for p in paths], top=3, runtime="openvino")
    _same_answers([a.json() for a in answers], expected["predictions"])


@pytest.mark.parametrize(
    ("body", "kind", "status", "words"),
    [
        (b"these are not pixels", "image/png", 400, "not an image"),
        (b"", "image/jpeg", 400, "empty"),
        (png()[:60], "image/png", 400, "truncated"),
        (png((64, 64)), "image/png", 413, "too many pixels"),
        (b"x" * 5000, "image/png", 413, "over the limit"),
        (png(), "text/plain", 415, "Content-Type"),
    ],
)
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(
    server: Any, body: bytes, kind: str, status: int, words: str
) -> None:
    client, _ = server(max_pixels=2000, max_body=4000)
    answer = client.post("/predict", content=body, headers={"Content-Type": kind})
    assert answer.status_code == status, answer.text
    assert answer.json()["status"] == status and words in answer.json()["error"]
    good = client.post("/predict", content=png(), headers={"Content-Type": "image/png"})
    assert good.status_code == 200 and good.json()["label"] in CLASSES


def test_the_first_bad_part_of_a_multipart_body_is_named(server: Any) -> None:
    client, _ = server()
    parts = (("good.png", png()), ("bad.png", b"nope"), ("empty.png", b""))
    files = [("images", (name, data, "image/png")) for name, data in parts]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "not an image (bad.png)"
    assert client.get("/health").json()["in_flight"] == 0


def test_unknown_routes_and_methods_get_json(server: Any) -> None:
    client, _ = server()
    missing = client.get("/models/../../etc/passwd")
    assert missing.status_code == 404 and "no route" in missing.json()["error"]
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "GET" in wrong.json()["error"]
    assert client.delete("/health").status_code == 405
    bad_form = client.post(
        "/predict", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert bad_form.status_code == 400 and bad_form.json()["error"]


def test_a_slow_client_gets_408(server: Any) -> None:
    client, _ = server(read_timeout=0.3)
    app = client.app
    sent: list[dict[str, Any]] = []

    async def call() -> None:
        chunks = [
            {"type": "http.request", "body": png()[:20], "more_body": True},
        ]

        async def receive() -> dict[str, Any]:
            if chunks:
                return chunks.pop()
            await asyncio.sleep(5)  # the rest never comes in time
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "raw_path": b"/predict",
            "query_string": b"",
            "headers": [(b"content-type", b"image/png")],
            "scheme": "http",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5555),
            "http_version": "1.1",
            "root_path": "",
        }
        await app(scope, receive, send)

    started = time.perf_counter()
    asyncio.run(call())
    assert time.perf_counter() - started < 3
    assert sent[0]["status"] == 408
    assert "did not arrive" in json.loads(sent[1]["body"])["error"]
    assert client.get("/health").status_code == 200


def test_a_model_that_cannot_be_loaded_stops_serve_in_one_line(
    tmp_path: Path, model: dict[str, Any], tiny: str
) -> None:
    broken = tmp_path / "broken.skops"
    broken.write_bytes(b"PK\x03\x04 not a zip at all")
    for path in (tmp_path / "missing.skops", broken, model["root"] / "f.h5"):
        result = invoke_cli("serve", path, "--port", "0")
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_after_the_request_in_flight(
    model: dict[str, Any], tmp_path: Path, sig: int
) -> None:
    site = write_entry_points(tmp_path / "site", {"tiny": "tiny_backbone"}, name="tiny-backbone")
    env = {**QUIET_ENV, **plugin_env(site, "tiny")}
    process = subprocess.Popen(
        [sys.executable, "-m", "transferkit", "serve", str(model["model"]), "--port", "0",
         "--max-wait-ms", "1500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        url, lines = "", []
        deadline = time.monotonic() + 120
        while not url and time.monotonic() < deadline:
            line = process.stderr.readline() if process.stderr else ""
            if not line:
                break
            lines.append(line)
            if " at http://127.0.0.1:" in line:
                url = line.split(" at ")[1].split()[0]
        assert url, "".join(lines)
        answer: dict[str, Any] = {}

        def ask() -> None:
            request = urllib.request.Request(
                f"{url}/predict", data=png(), headers={"Content-Type": "image/png"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answer.update(status=response.status, body=json.loads(response.read()))

        asking = threading.Thread(target=ask)
        asking.start()
        waiting = 0  # until the request waits in the batcher (--max-wait-ms 1500)
        while not waiting and asking.is_alive():
            with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
                waiting = json.loads(response.read())["in_flight"]
        process.send_signal(sig)
        asking.join(60)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert answer.get("status") == 200 and answer["body"]["label"] in CLASSES
    assert process.returncode == 0, err
    assert "Traceback" not in err and "stopped serving" in err


def test_the_server_module_leaves_the_functions_serve_and_export_in_place() -> None:
    import transferkit
    import transferkit.jobs.export
    import transferkit.serving  # noqa: F401

    assert transferkit.serve.__module__ == "transferkit.api"
    assert transferkit.export.__module__ == "transferkit.api"
