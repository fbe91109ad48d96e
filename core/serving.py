"""``transferkit serve``: a trained model behind HTTP (Starlette on uvicorn), micro-batched.

Routes:

* ``GET /health``: ``{"status": "ok"}``, how many batches and images it has run, and how many
  images are in flight;
* ``GET /metadata``: the class names, the recipe (backbone, input size, pooling), the
  classifier and the serving limits;
* ``POST /predict``: one image as the raw body (``Content-Type: image/*``), or several as
  ``multipart/form-data`` (every file part is an image). The answer is what ``transferkit
  predict`` gives for the image, less its path: ``label``, ``probability``, ``index``, ``top``
  (the ``top`` most probable classes), and any other field ``predict`` adds per image. A
  multipart request gets ``{"predictions": [...]}`` in the order of its parts, each with its
  part's ``name``.

Every answer is JSON, errors too: ``{"error": "...", "status": code}``. A body that is not an
image, empty or truncated gets 400; a body over ``max_body`` bytes or an image over
``max_pixels`` pixels 413; a client that takes longer than ``read_timeout`` seconds to send its
body 408; an unknown route 404, a wrong method 405; another content type 415. The server keeps
serving after each.

An answer is the one ``transferkit predict`` gives, made by the same functions: the request
handler decodes and resizes its image off the event loop, as ``predict``'s input pipeline does
(:func:`transferkit.pipeline.decode_resized`: the same header check, decoders and resize; its
pixel count checked first), so nothing in a request names a file on the server, and only the
model given at start is ever loaded, never a pickle that a request brings. The
:class:`Batcher` collects the images of concurrent requests, up to ``max_batch``, or until
``max_wait_ms`` pass without a new one, and the thread of a free lane runs each batch: the
arrays stacked and preprocessed, one forward pass of the network on the runtime (its
``tf.function``, compiled model or interpreter, built and warmed up once at start inside
:func:`transferkit.reuse.kept`), and each image's answer made by ``predict``'s own functions
(label, probability, top-k, ``ood_score``, ``unfamiliar``, ``prediction_set``). While a batch
runs, the next requests are decoded. Keras has one lane; a runtime with a compiled network of
its own (OpenVINO, LiteRT) has two on two cores or more, each with its own copy of the network
on half of the cores (:func:`lane_forwards`), so that the next batch runs beside the one
running rather than after it. BLAS runs on one thread in the server (the head's products are
small).

SIGINT and SIGTERM stop the server: it stops accepting, lets the requests in flight finish,
and returns (no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import registry
from .errors import TransferkitError, UsageError
from .options import ServeOptions

log = logging.getLogger(__name__)

# the loggers whose per-call lines a server would repeat for every batch
_PER_CALL_LOGGERS = ("transferkit.jobs.predict", "transferkit.jobs.finetune")


class RequestError(Exception):
    """A request the server refuses: its HTTP status and one line."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class ServedModel:
    """The model a server answers with: checked and warmed up when made, so a model that
    cannot be loaded stops ``serve`` before it binds.

    :meth:`decode` turns one request's bytes into the network's input as ``predict``'s input
    pipeline would (:func:`transferkit.pipeline.decode_resized`), and :meth:`answer` runs a
    batch of them: stacked, preprocessed, one forward pass of the network on the runtime, and
    each image's answer made by ``predict``'s own functions
    (:func:`transferkit.jobs.predict.answers`, or for a fine-tuned model
    :func:`transferkit.jobs.finetune.finetuned_answers` over
    :func:`transferkit.jobs.finetune_trust.batch_fields`)."""

    def __init__(self, model_path: str | Path, options: ServeOptions) -> None:
        self.path = Path(model_path)
        self.options = options
        self.calls = 0  # batches run through the network
        self._counting = threading.Lock()  # lanes count their batches from their own threads
        self.input_size: tuple[int, ...] = (32, 32)
        self.resize: Any = "auto"
        self.preprocess: Callable[[Any], Any] | None = None
        # one answering function per lane: batches that may run at the same time (see lanes())
        self._answers: list[Callable[[Any], list[dict[str, Any]]]] = []
        self.info = self._load()
        self.warm_up()

    def _load(self) -> dict[str, Any]:
        """Load the model and its network (built once: the server runs inside ``kept()``), and
        say what it is."""
        from .jobs.predict import answers, check_coverage, network
        from .models import identify_file, load_model
        from .trainer.saved import is_finetuned, load_finetuned

        options = self.options
        if not self.path.exists():
            raise UsageError(f"model {self.path} does not exist")
        if is_finetuned(self.path) or identify_file(self.path) == "keras":
            from .jobs.finetune import finetuned_answers
            from .jobs.finetune_trust import batch_fields

            loaded = load_finetuned(self.path)
            run = batch_fields(loaded, options.runtime, options.coverage, options.max_batch)

            def answer_finetuned(images: Any) -> list[dict[str, Any]]:
                probs, extra = run(images)
                return finetuned_answers(loaded, probs, extra, options.top)

            self.input_size, self.resize = tuple(loaded.input_size), loaded.resize
            self.preprocess = loaded.preprocess
            self._answers = [answer_finetuned]
            meta = loaded.metadata
            return {
                "model": self.path.name,
                "classifier": f"finetuned {meta.get('head', '')} head".strip(),
                "label_names": list(loaded.label_names),
                "input_size": list(loaded.input_size),
                "recipe": meta.get("recipe") or {
                    "backbone": meta.get("backbone"),
                    "input_size": list(loaded.input_size),
                    "preprocessing": meta.get("preprocessing"),
                },
            }  # fmt: skip
        saved = load_model(self.path, trust=options.trust)
        check_coverage(saved, options.coverage, self.path)
        backbone, forward = network(
            saved, runtime=options.runtime, images=options.max_batch, batch_size=options.max_batch
        )

        def answer_with(forward: Callable[[Any], Any]) -> Callable[[Any], list[dict[str, Any]]]:
            def answer_saved(images: Any) -> list[dict[str, Any]]:
                return answers(saved, forward(images), options.top, options.coverage, self.path)

            return answer_saved

        self.input_size, self.resize = tuple(backbone.input_size), backbone.resize
        self.preprocess = backbone.preprocess
        self._answers = [answer_with(f) for f in lane_forwards(saved, backbone, forward, options)]
        recipe = saved.recipe.to_metadata()
        size = recipe.get("input_size")
        if size is None and saved.recipe.backbone:  # the backbone's own size
            size = list(registry.backbone(saved.recipe.backbone).input_size)
        return {
            "model": self.path.name,
            "classifier": saved.classifier,
            "label_names": list(saved.label_names),
            "input_size": size,
            "recipe": recipe,
        }

    def decode(self, data: bytes, name: str = "") -> Any:
        """One image's bytes as the network's input before ``preprocess``: float32
        ``(H, W, 3)``, decoded and resized as ``predict``'s input pipeline does; a
        :class:`RequestError` (400, or 413 over ``max_pixels``) for what it would skip."""
        from .images import SkipImage
        from .pipeline import decode_resized

        where = f" ({name})" if name else ""
        if not data:
            raise RequestError(400, f"empty body{where}: send the image's bytes")
        try:
            return decode_resized(
                data, self.input_size, resize=self.resize, max_pixels=self.options.max_pixels
            )
        except SkipImage as exc:
            status = 413 if exc.reason.startswith("too many pixels") else 400
            raise RequestError(status, f"{exc.reason}{where}") from None

    def warm_up(self) -> None:
        """Run the network on a grey image in batches of 1 to 8 and in a full batch, so that a
        runtime that compiles a network per shape (OpenVINO, for the last, shorter slice of a
        batch) does so before the first request; a model that cannot predict it stops the
        server here."""
        import numpy as np
        from PIL import Image

        grey = io.BytesIO()
        Image.fromarray(np.full((*self.input_size, 3), 128, np.uint8)).save(grey, format="PNG")
        image = self.decode(grey.getvalue())
        most = self.options.max_batch
        # a full batch, and a full batch shared among the lanes (see Batcher)
        every = sorted(
            {*range(1, min(8, most) + 1), most, *(-(-most // n) for n in range(1, self.lanes + 1))}
        )
        for lane, rows in ((lane, rows) for lane in range(self.lanes) for rows in every):
            try:
                self.answer([image] * rows, lane)
            except TransferkitError:
                raise
            except Exception as exc:
                raise TransferkitError(
                    f"{self.path} cannot predict a test image: {type(exc).__name__}: {exc}"
                ) from None
        self.calls = 0

    @property
    def lanes(self) -> int:
        """How many batches may run at the same time, each on its own network."""
        return len(self._answers)

    def answer(self, images: list[Any], lane: int = 0) -> list[dict[str, Any]]:
        """``predict``'s per-image answers (less path and status) for decoded ``images``, in
        order, from one forward pass over them on the network of ``lane``."""
        import numpy as np
        import tensorflow as tf

        with self._counting:
            self.calls += 1
        batch = tf.constant(np.stack(images).astype(np.float32, copy=False))
        if self.preprocess is not None:
            batch = tf.cast(self.preprocess(batch), tf.float32)
        return self._answers[lane](batch)


# batches a server runs at the same time on a runtime with a compiled network of its own
LANES = 2


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or ``taskset`` sets
    it), not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def lane_forwards(saved: Any, backbone: Any, forward: Any, options: ServeOptions) -> list[Any]:
    """The networks of the server's lanes, one per batch that may run at the same time.

    ``forward`` alone (one lane) on Keras, whose forward passes share TensorFlow's thread pools,
    or with fewer than two cores. A runtime that converts the network (OpenVINO, LiteRT) runs
    its own compiled copy with threads of its own, so it gets :data:`LANES` copies, each on
    ``cores // LANES`` threads: while one batch runs the next fills and runs beside it, and no
    copy's threads wait for each other in every layer (one thread per copy on two cores). The
    copies are the same network at the same precision, compiled for fewer threads, and give
    the same features."""
    from .inference import build_forward

    cores = usable_cores()
    spec = registry.runtime(forward.runtime)
    if cores < 2 or spec.convert is None:
        return [forward]
    return [
        build_forward(
            backbone,
            backbone=registry.backbone(saved.recipe.backbone).name,
            runtime=forward.runtime,
            precision=forward.precision,
            images=options.max_batch,
            batch_size=options.max_batch,
            threads=max(1, cores // LANES),
        )
        for _ in range(LANES)
    ]


class Batcher:
    """Collects the images of concurrent requests into batches: up to ``max_batch`` images, or
    until ``max_wait`` seconds pass without a new one while none is being decoded (at most
    ``10 * max_wait`` after the first), whichever comes first; ``run`` (a list of decoded
    images and a lane -> their answers) runs each batch in the worker thread of a free lane.
    A batch starts filling when a lane is free, so with one lane batches never overlap, and
    with ``lanes`` of them at most that many run at once; a batch that closes while other lanes
    are free too is shared among them (a contiguous part each), so no lane's cores stay idle.
    ``sizes`` counts each batch once, however many lanes ran it."""

    def __init__(
        self,
        run: Callable[[list[Any], int], list[dict[str, Any]]],
        max_batch: int,
        max_wait: float,
        lanes: int = 1,
    ) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.sizes: list[int] = []  # the size of each batch run
        self.in_flight = 0  # images submitted and not yet answered
        self.decoding = 0  # images of requests read and still being decoded
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[dict[str, Any]]]] = asyncio.Queue()
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"transferkit-batch-{lane}")
            for lane in range(lanes)
        ]
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for lane in range(lanes):
            self._free.put_nowait(lane)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():  # images no batch took: their requests hear it
            _, future = self._queue.get_nowait()
            future.cancel()
        for executor in self._executors:
            executor.shutdown(wait=True)

    async def submit(self, images: list[Any]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            self._queue.put_nowait((image, future))
        self.in_flight += len(images)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.in_flight -= len(images)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            lane = await self._free.get()
            batch = [await self._queue.get()]
            # open while images keep coming: until max_wait passes without one (or the batch
            # is full, or 10 x max_wait after the first), so that a burst of requests that the
            # server parses one after the other still makes one batch
            cap = loop.time() + 10 * self.max_wait
            while len(batch) < self.max_batch:
                # images still being decoded are on their way: wait for them up to the cap
                until = cap if self.decoding else min(cap, loop.time() + self.max_wait)
                left = until - loop.time()
                try:
                    if left <= 0:
                        batch.append(self._queue.get_nowait())
                    else:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            self.sizes.append(len(batch))
            # lanes left idle would leave their cores idle: the batch is shared among the
            # lanes free now, each running a contiguous part of it on its own network
            lanes = [lane]
            while len(lanes) < len(batch) and not self._free.empty():
                lanes.append(self._free.get_nowait())
            step = -(-len(batch) // len(lanes))
            parts = [batch[at : at + step] for at in range(0, len(batch), step)]
            for unused in lanes[len(parts) :]:
                self._free.put_nowait(unused)
            for part, part_lane in zip(parts, lanes, strict=False):
                task = loop.create_task(self._run(part, part_lane))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run(
        self, batch: list[tuple[Any, asyncio.Future[dict[str, Any]]]], lane: int
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.run_in_executor(
                self._executors[lane], self.run, [image for image, _ in batch], lane
            )
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answer(s) for {len(batch)} image(s)")
        except Exception as exc:  # the batch failed as a whole: each request hears why
            log.error(f"a batch of {len(batch)} image(s) failed: {type(exc).__name__}: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (the server closing): no request waits for it
            for _, future in batch:
                future.cancel()
            raise
        finally:
            self._free.put_nowait(lane)
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)


# ---------------------------------------------------------------------- reading requests


async def read_body(receive_chunks: AsyncIterator[bytes], options: ServeOptions) -> bytes:
    """The request body, refused over ``max_body`` bytes (413) or when the client takes longer
    than ``read_timeout`` seconds to send it (408)."""
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in receive_chunks:
            size += len(chunk)
            if size > options.max_body:
                raise RequestError(413, f"the body is over the limit of {options.max_body} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), options.read_timeout)
    except asyncio.TimeoutError:
        raise RequestError(
            408, f"the body did not arrive within {options.read_timeout:g} seconds"
        ) from None
    return b"".join(chunks)


# ---------------------------------------------------------------------- the application


def build_app(served: ServedModel) -> Any:
    """The Starlette application answering with ``served`` (its lifespan runs the batcher)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    options = served.options
    state: dict[str, Batcher] = {}
    # decoding is CPU work: one thread per core, as the input pipeline's parallel map has
    decoders: list[ThreadPoolExecutor] = []

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, "status": status, **extra}, status_code=status)

    async def health(request: Request) -> JSONResponse:
        batcher = state.get("batcher")
        sizes = batcher.sizes if batcher is not None else []
        waiting = batcher.in_flight if batcher is not None else 0
        return JSONResponse(
            {"status": "ok", "batches": len(sizes), "images": sum(sizes), "in_flight": waiting}
        )

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                **served.info,
                "top": options.top,
                **({"coverage": options.coverage} if options.coverage is not None else {}),
                "limits": {
                    "max_batch": options.max_batch,
                    "max_wait_ms": options.max_wait_ms,
                    "max_body": options.max_body,
                    "max_pixels": options.max_pixels,
                    "max_images": options.max_images,
                    "read_timeout": options.read_timeout,
                },
            }
        )

    async def predict(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (kind.startswith("image/") or kind == "multipart/form-data"):
            raise RequestError(
                415, f"send an image (Content-Type: image/*) or multipart/form-data, not {kind!r}"
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > options.max_body:
            raise RequestError(413, f"the body is over the limit of {options.max_body} bytes")
        body = await read_body(request.stream(), options)
        parts = [("", body)] if kind.startswith("image/") else await _parts(request, body)
        # decoded and resized here, off the event loop (the parts of a multipart body at once),
        # while the network runs other batches; the first part refused, in order, answers
        batcher, pool, loop = state["batcher"], decoders[0], asyncio.get_running_loop()
        batcher.decoding += len(parts)
        try:
            decoded = await asyncio.gather(
                *(loop.run_in_executor(pool, served.decode, data, name) for name, data in parts),
                return_exceptions=True,
            )
        finally:
            batcher.decoding -= len(parts)
        for image in decoded:
            if isinstance(image, BaseException):
                raise image
        answers = await batcher.submit(list(decoded))
        for (name, _), answer in zip(parts, answers, strict=True):
            if "error" in answer:
                raise RequestError(400, answer["error"] + (f" ({name})" if name else ""))
        if kind.startswith("image/"):
            return JSONResponse(answers[0])
        return JSONResponse(
            {"predictions": [{"name": n, **a} for (n, _), a in zip(parts, answers, strict=True)]}
        )

    async def _parts(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def stream() -> AsyncGenerator[bytes, None]:
            yield body

        parser = MultiPartParser(
            request.headers,
            stream(),
            max_files=options.max_images,
            max_fields=options.max_images,
            max_part_size=options.max_body,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise RequestError(400, f"malformed multipart body: {exc.message}") from None
        parts = []
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    parts.append((value.filename or key, await value.read()))
        finally:
            await form.close()
        if not parts:
            raise RequestError(400, "the multipart body holds no file part (no image)")
        return parts

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        log.info(f"{request.method} {request.url.path}: {exc.status} {exc.message}")
        return error(exc.status, exc.message, **exc.extra)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        messages = {404: f"no route {request.url.path}; routes: /health, /metadata, /predict",
                    405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)))

    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error(f"{request.method} {request.url.path} failed: {type(exc).__name__}: {exc}")
        return error(500, f"{type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher = Batcher(
            served.answer, options.max_batch, options.max_wait_ms / 1000, served.lanes
        )
        batcher.start()
        state["batcher"] = batcher
        decoders.append(ThreadPoolExecutor(usable_cores(), "transferkit-decode"))
        try:
            yield
        finally:
            await batcher.close()
            decoders.pop().shutdown(wait=True)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metadata", metadata, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={
            RequestError: refused,
            HTTPException: http_error,
            Exception: failed,
        },
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batchers = state
    return app


# ---------------------------------------------------------------------- running


def require_serving() -> None:
    """Refuse in one line when the ``serve`` extra is not installed."""
    try:
        import python_multipart  # noqa: F401  (Starlette's multipart parser)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"transferkit serve needs {exc.name}: pip install 'transferkit[serve]'"
        ) from None


@contextlib.contextmanager
def serving(model_path: str | Path, options: ServeOptions) -> Iterator[ServedModel]:
    """The :class:`ServedModel` of ``model_path`` with its network kept while the block runs."""
    from threadpoolctl import threadpool_limits

    from .reuse import kept

    require_serving()
    quieted = [logging.getLogger(name) for name in _PER_CALL_LOGGERS]
    levels = [logger.level for logger in quieted]
    try:
        for logger in quieted:  # one line per batch would drown the server's own
            logger.setLevel(logging.WARNING)
        # the head's and trust record's products are small (a batch's rows by the features):
        # BLAS threads would only wake, and spin between batches on the cores the network needs
        with kept(), threadpool_limits(1, user_api="blas"):
            yield ServedModel(model_path, options)
    finally:
        for logger, level in zip(quieted, levels, strict=True):
            logger.setLevel(level)


def serve(
    model_path: str | Path,
    *,
    options: ServeOptions,
    ready: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Serve ``model_path`` until SIGINT or SIGTERM; ``ready`` is called with the server's URL
    once it listens. Returns what was served: the URL, the number of batches and of images."""
    import uvicorn

    with serving(model_path, options) as served:
        app = build_app(served)
        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            # httptools and uvloop where installed (the serve extra has them), else h11, asyncio
            http="auto",
            loop="auto",
            timeout_graceful_shutdown=30,
        )
        server = _server_class()(config, served, ready)
        try:
            server.run()
        except SystemExit:  # uvicorn's answer to a failed start (it logged why)
            raise TransferkitError(
                f"cannot serve on {options.host}:{options.port} (is the port in use, or the "
                "address not this machine's?)"
            ) from None
        batcher = app.state.batchers.get("batcher")
        sizes = batcher.sizes if batcher is not None else []
        log.info(f"stopped serving {served.path} ({sum(sizes)} image(s) in {len(sizes)} batches)")
        return {"url": server.url, "batches": len(sizes), "images": sum(sizes)}


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which says where it listens and stops on SIGINT or SIGTERM without
        raising the signal again afterwards (uvicorn re-raises it: a KeyboardInterrupt)."""

        def __init__(
            self, config: Any, served: ServedModel, ready: Callable[[str], None] | None
        ) -> None:
            super().__init__(config)
            self.served = served
            self.ready = ready
            self.url = ""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.url = f"http://{shown}:{port}"
            log.info(f"serving {self.served.path} at {self.url} (Ctrl-C stops)")
            if self.ready is not None:
                self.ready(self.url)

    return Server
