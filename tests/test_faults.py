"""The fault suite: plugins that raise anything or import slowly, Ctrl-C and SIGKILL in the middle
of every long job, bad images, and two writers on one output. Each case checks the exit code, that
no traceback is printed, the message, and that nothing was lost or duplicated. Signals, plugin
imports and what a killed process leaves behind are tested on the real command line in a process
(``@pytest.mark.process``), with the tiny backbone; the rest runs the command line in this process.
docs/reliability.md lists each case with what transferkit does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import (
    QUIET_ENV,
    assert_fails_cleanly,
    assert_succeeds,
    invoke_cli,
    plugin_env,
    run_cli,
    tree_digest,
    write_entry_points,
)

# ---------------------------------------------------------------------------- plugins

PLUGINS = {
    "exits": "raise SystemExit(0)\n",
    "exits-code": "import sys\nsys.exit(3)\n",
    "raises-ki": "raise KeyboardInterrupt\n",
    "base": "class Odd(BaseException):\n    pass\nraise Odd('not an Exception')\n",
    "ctrl-c": (
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)  # what the terminal does on Ctrl-C\n"
        "time.sleep(30)\n"
    ),
    "slow": "import time\ntime.sleep(1.5)\n",
    "sleepy": (
        "import os, time\n"
        "from transferkit import ClassifierSpec, hookimpl\n"
        "def sleepy(name):\n"
        "    def factory(**params):\n"
        "        from sklearn.neighbors import NearestCentroid\n"
        "        class Sleepy(NearestCentroid):\n"
        "            def fit(self, X, y):\n"
        "                log = os.environ['FAULTS_FIT_LOG']\n"
        "                with open(log, 'a') as fh:\n"
        "                    fh.write(name + '\\n')\n"
        "                hold = os.environ.get('FAULTS_HOLD_AFTER')  # then hang\n"
        "                if hold and len(open(log).read().split()) > int(hold):\n"
        "                    time.sleep(600)\n"
        "                time.sleep(0.3)\n"
        "                return super().fit(X, y)\n"
        "        return Sleepy()\n"
        "    return factory\n"
        "@hookimpl\n"
        "def register_classifiers(register):\n"
        "    for i in range(8):\n"
        "        name = f'sleepy-{i}'\n"
        "        register(ClassifierSpec(name=name, description='slow', factory=sleepy(name)))\n"
    ),
    "good": (
        "from transferkit import ClassifierSpec, hookimpl\n"
        "def centroid(**params):\n"
        "    from sklearn.neighbors import NearestCentroid\n"
        "    return NearestCentroid(**params)\n"
        "@hookimpl\n"
        "def register_classifiers(register):\n"
        "    register(ClassifierSpec(name='plugin-centroid', description='from a plugin',\n"
        "                            factory=centroid))\n"
    ),
}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for PYTHONPATH with one module per plugin of PLUGINS, each declared as a
    ``transferkit`` entry point of a fake installed distribution, and the entry points ``inject``
    (tests/fault_plugin.py) and ``tiny`` (tests/tiny_backbone.py)."""
    root = tmp_path_factory.mktemp("site")
    modules = {}
    for name, code in PLUGINS.items():
        modules[name] = "fault_plugin_" + name.replace("-", "_")
        (root / f"{modules[name]}.py").write_text(code)
    return write_entry_points(root, {**modules, "inject": "fault_plugin", "tiny": "tiny_backbone"})


RAISERS = {
    "exits": "SystemExit: 0",
    "exits-code": "SystemExit: 3",
    "raises-ki": "KeyboardInterrupt",
    "base": "Odd: not an Exception",
}


@pytest.mark.process
def test_a_plugin_raising_any_base_exception_is_isolated(plugin_path: Path) -> None:
    env = plugin_env(plugin_path, ",".join([*RAISERS, "good"]))
    listed = run_cli("plugins", "--json", env=env)
    assert_succeeds(listed)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    for name, error in RAISERS.items():
        assert f'error loading plugin "{name}": {error}' in listed.stderr
        assert rows[name]["status"] == "failed" and error in rows[name]["error"]
    assert rows["good"]["status"] == "loaded" and rows["good"]["version"] == "0.3"
    # the command still does its work: the healthy plugin's classifier is there
    classifiers = run_cli("classifiers", "--json", env=env)
    assert_succeeds(classifiers)
    assert "plugin-centroid" in {c["name"] for c in json.loads(classifiers.stdout)}


@pytest.mark.process
def test_strict_mode_stops_on_a_system_exit_with_a_message(plugin_path: Path) -> None:
    env = plugin_env(plugin_path, "exits", TRANSFERKIT_STRICT_PLUGINS="1")
    result = run_cli("plugins", env=env)
    assert result.returncode != 0  # not the plugin's exit code 0: that would hide the failure
    assert "PluginLoadError" in result.stderr and '"exits" raised SystemExit' in result.stderr


@pytest.mark.process
def test_ctrl_c_while_plugins_load_stops_the_program(plugin_path: Path) -> None:
    start = time.monotonic()
    result = run_cli("plugins", env=plugin_env(plugin_path, "ctrl-c,good"))
    assert time.monotonic() - start < 25  # did not sit out the plugin's sleep
    assert_fails_cleanly(result, 130, "interrupted while loading plugins")
    assert result.stdout == ""


@pytest.mark.process
def test_a_slow_plugin_is_named_with_the_way_round(plugin_path: Path) -> None:
    env = plugin_env(plugin_path, "slow,good", TRANSFERKIT_PLUGIN_SLOW_SECONDS="0.3")
    result = run_cli("plugins", "--json", env=env)
    assert_succeeds(result)
    assert 'plugin "slow" is still importing after 0.3s' in result.stderr
    assert "TRANSFERKIT_LOAD_PLUGINS" in result.stderr
    assert 'plugin "slow" took' in result.stderr
    assert "good" not in result.stderr  # the fast one is not named
    # a timer, not a time-out: the slow plugin still loads
    assert {r["name"]: r["status"] for r in json.loads(result.stdout)} == {
        "slow": "loaded",
        "good": "loaded",
    }
    quiet = run_cli("plugins", env=plugin_env(plugin_path, "slow"))  # default threshold: 5 s
    assert_succeeds(quiet)
    assert "slow" not in quiet.stderr


# ---------------------------------------------------------------------------- spot-check


def _wait_until(ready: Any, proc: subprocess.Popen[str], limit: float = 120) -> None:
    """Wait until ``ready()`` is true while ``proc`` runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before it could be stopped"
            )
        time.sleep(0.05)
    raise AssertionError("the run never reached the point where it was to be stopped")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _start(args: list[Any], env: dict[str, str]) -> subprocess.Popen[str]:
    """The command in a session of its own, so that a signal can go to all its processes."""
    return subprocess.Popen(
        [sys.executable, "-m", "transferkit", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **QUIET_ENV, **env},
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str], sig: int) -> subprocess.CompletedProcess[str]:
    """Send ``sig`` to the whole session (what the terminal does on Ctrl-C) and collect it;
    returns once every process holding its output pipes has ended (a spot-check worker, in a
    process group of its own, that outlived its killed parent would hold them)."""
    try:
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _journal_pairs(path: Path) -> list[str]:
    pairs = []
    for line in path.read_text().splitlines()[1:]:
        with contextlib.suppress(ValueError):
            pairs.append(json.loads(line)["row"]["classifier"])
    return pairs


def _interrupt(
    args: list[str], env: dict[str, str], journal: Path, rows: int, sig: int
) -> subprocess.CompletedProcess[str]:
    """Signal the command once the journal holds ``rows`` rows (after its key line)."""
    proc = _start(args, env)
    _wait_until(lambda: _lines(journal) >= rows + 1, proc)
    return _stop(proc, sig)


@pytest.mark.process
def test_ctrl_c_and_sigkill_during_spotcheck_keep_every_finished_row(
    plugin_path: Path, tmp_path: Path
) -> None:
    from test_train import write_digits

    store = write_digits(tmp_path / "digits.h5", rows=300)
    before = store.read_bytes()
    out = tmp_path / "report"
    journal = out / "spotcheck-journal.jsonl"
    pairs = [f"sleepy-{i}" for i in range(8)]
    args = ["spotcheck", str(store), "-c", ",".join(pairs), "-j", "1", "--out", str(out)]
    logs = [tmp_path / f"fits-{i}.log" for i in range(3)]

    def env(run: int, **extra: str) -> dict[str, str]:
        return {**plugin_env(plugin_path, "sleepy"), "FAULTS_FIT_LOG": str(logs[run]), **extra}

    # Ctrl-C: the finished rows are the report, marked incomplete (two pairs, then the third
    # hangs, so that the signal always comes in the middle)
    first = _interrupt(args, env(0, FAULTS_HOLD_AFTER="2"), journal, 2, signal.SIGINT)
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stdout + first.stderr, first.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False
    done = [r["classifier"] for r in report["rows"]]
    assert 2 <= len(done) < 8 and done == _journal_pairs(journal)
    assert report["pairs_left"] == 8 - len(done)
    assert f"{len(done)} of 8 pairs finished, {8 - len(done)} left" in first.stderr
    assert all(r["status"] == "ok" for r in report["rows"])

    # SIGKILL of the rerun: nothing is cleaned up, the journal still holds every finished row;
    # before that, a second spot-check on the same --out is refused
    proc = _start(args, env(1, FAULTS_HOLD_AFTER="1"))  # one more pair, then the next hangs
    _wait_until(lambda: _lines(journal) >= len(done) + 2, proc)
    rival = run_cli(*args, env=env(1))
    assert_fails_cleanly(rival, 1, f"being written by another spot-check (process {proc.pid})")
    second = _stop(proc, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    assert f"{len(done)} done in an earlier run" in second.stderr
    assert not set(logs[1].read_text().split()) & set(done)  # the kept pairs were not refitted
    kept = _journal_pairs(journal)
    assert kept[: len(done)] == done and len(set(kept)) == len(kept) == len(done) + 1

    third = run_cli(*args, env=env(2))
    assert_succeeds(third)
    assert f"{len(kept)} done in an earlier run" in third.stderr
    assert sorted(logs[2].read_text().split()) == sorted(set(pairs) - set(kept))
    final = json.loads((out / "report.json").read_text())
    assert final["complete"] is True and final["pairs_left"] == 0
    assert [r["classifier"] for r in final["rows"]] == pairs  # none lost, none twice
    assert all(r["status"] == "ok" and r["accuracy"] > 0.5 for r in final["rows"])
    assert not journal.exists() and not Path(f"{journal}.lock").exists()
    assert store.read_bytes() == before


# ---------------------------------------------------------------------------- images

BACKBONE = ["-b", "efficientnet-lite0", "--input-size", "32"]
TINY = ["-b", "tiny-cnn", "--input-size", "32"]  # tests/tiny_backbone.py, for the processes

# a decoded file -> the plain file with the pixels it must decode to (same features)
DECODED = {
    "rocket/png_named.jpg": "rocket/png_named_ref.png",  # wrong suffix: a PNG called .jpg
    "rocket/jpeg_named.png": "rocket/jpeg_named_ref.jpg",  # and a JPEG called .png
    "cat/deep16.png": "cat/deep16_ref.png",  # 16 bits per pixel
    "cat/cmyk.jpg": "cat/cmyk_ref.png",
    "cat/palette_t.png": "cat/palette_t_ref.png",  # a palette with a transparent colour
    "rocket/exif6.jpg": "rocket/exif6_ref.png",  # EXIF: rotate 90 degrees clockwise
    "rocket/anim.gif": "rocket/anim_ref.png",  # animated: the first frame
}
SKIPPED = {
    "rocket/truncated.jpg": "truncated",
    "rocket/empty.jpg": "zero bytes",
    "rocket/notes.jpg": "not an image",  # text with an image suffix
    "cat/bomb.png": "too many pixels",  # 20000 x 20000 pixels in a few kilobytes
}


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A real, valid 1-bit PNG of side x side black pixels: 50 MB of pixels in ~50 kB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def build_corpus(root: Path) -> int:
    """Good JPEGs in two classes, the hard-but-valid files of DECODED with their plain twins,
    and the unusable files of SKIPPED; returns the number of image files."""
    from imagefiles import add_bad_files, exif_rotated_jpeg, make_folder, photo
    from PIL import Image

    make_folder(root, per_class=4, size=40)
    add_bad_files(root / "rocket")
    cat, rocket = root / "cat", root / "rocket"

    photo("coffee").save(rocket / "png_named.jpg", format="PNG")
    photo("coffee").save(rocket / "png_named_ref.png")
    photo("rocket").save(rocket / "jpeg_named.png", format="JPEG", quality=90)
    (rocket / "jpeg_named_ref.jpg").write_bytes((rocket / "jpeg_named.png").read_bytes())

    gray = np.asarray(photo("chelsea").convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(cat / "deep16.png")  # 16-bit grey
    assert Image.open(cat / "deep16.png").mode.startswith("I")
    Image.fromarray(gray).save(cat / "deep16_ref.png")

    photo("astronaut").convert("CMYK").save(cat / "cmyk.jpg", quality=95)
    Image.open(cat / "cmyk.jpg").convert("RGB").save(cat / "cmyk_ref.png")

    pal = photo("chelsea").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(cat / "palette_t.png", transparency=0)
    rgba = np.asarray(Image.open(cat / "palette_t.png").convert("RGBA")).astype(np.int32)
    alpha = rgba[..., 3:] / 255.0
    on_white = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    assert (rgba[..., 3] == 0).any()  # some pixels are transparent
    Image.fromarray(on_white).save(cat / "palette_t_ref.png")

    stored = exif_rotated_jpeg(rocket / "exif6.jpg", orientation=6)
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, k=-1))).save(rocket / "exif6_ref.png")

    frames = [photo(name).quantize(32) for name in ("rocket", "coffee", "astronaut")]
    frames[0].save(rocket / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(rocket / "anim.gif").n_frames == 3
    Image.open(rocket / "anim.gif").convert("RGB").save(rocket / "anim_ref.png")

    _bomb_png(cat / "bomb.png")
    return sum(1 for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, Path, dict[str, Any]]:
    """The corpus, and its features extracted by the command line in one uninterrupted run."""
    root = tmp_path_factory.mktemp("corpus")
    images = root / "images"
    count = build_corpus(images)
    reference = root / "reference.h5"
    result = invoke_cli("extract", images, *BACKBONE, "-o", reference, "--json", "--no-progress")
    assert_succeeds(result)
    return images, count, reference, json.loads(result.stdout)


def test_bad_images_are_decoded_or_skipped_with_their_reason(
    corpus: tuple[Path, int, Path, dict[str, Any]],
) -> None:
    from transferkit.store import open_store

    images, count, reference, summary = corpus
    # the counts add up to the files found
    assert summary["images"] == count
    assert summary["rows"] + summary["skipped"] == count
    assert summary["skipped"] == len(SKIPPED)
    reasons = {os.path.relpath(p, images): r for p, r in summary["skipped_files"]}
    assert set(reasons) == set(SKIPPED)
    for name, reason in SKIPPED.items():
        assert reason in reasons[name], (name, reasons[name])
    with open_store(reference) as store:
        assert store.complete and len(store) == summary["rows"]
        assert store.metadata["image_count"] == count
        rows = {os.path.relpath(p, images): i for i, p in enumerate(store.paths)}
        assert len(rows) == len(store)  # no image twice
        x, _ = store.read()
    for hard, plain in DECODED.items():
        np.testing.assert_allclose(x[rows[hard]], x[rows[plain]], rtol=1e-4, atol=1e-5)
    # the 16-bit image is not a black or white picture: its features differ from a flat one's
    assert not np.allclose(x[rows["cat/deep16.png"]], x[rows["cat/cmyk.jpg"]])


# ---------------------------------------------------------------------------- SIGKILL and resume


@pytest.mark.process
@pytest.mark.slow
def test_sigkill_during_extraction_and_during_a_flush_then_resume_loses_nothing(
    corpus: tuple[Path, int, Path, dict[str, Any]],
    plugin_path: Path,
    tmp_path: Path,
    register_plugin: Any,
    tiny: str,
) -> None:
    """Killed between two flushes, then killed again inside a flush of the resumed run (the
    features of a new block written, its labels array grown, its paths not), then Ctrl-C: the
    final ``--resume`` gives the uninterrupted run's store. Meanwhile a second writer is
    refused."""
    import fault_plugin

    from transferkit.store import open_store

    register_plugin(fault_plugin, "inject")  # for the runs in this process
    images, count, _, _ = corpus
    before = tree_digest(images)
    reference = tmp_path / "reference.h5"
    assert_succeeds(invoke_cli("extract", images, *TINY, "-o", reference, "--no-progress"))
    out = tmp_path / "features.ph5"  # HDF5, through the plugin's pausing store
    mark = tmp_path / "paused"
    args = ["extract", images, *TINY, "-o", out, "--batch-size", "4", "--buffer-rows", "8"]
    args += ["--no-progress"]

    def env(pause: str = "") -> dict[str, str]:
        return plugin_env(plugin_path, "inject,tiny", FAULTS_PAUSE=pause, FAULTS_MARK=str(mark))

    # 1. killed after its third batch: two batches flushed, one in the buffer
    first = _start(args, env("batch:3"))
    _wait_until(mark.exists, first)
    on_disk = tree_digest(tmp_path)
    # a second writer on the same output is refused, even with --overwrite, and deletes nothing
    second = invoke_cli(*args, "--overwrite")
    assert_fails_cleanly(second, 1, f"is being written by process {first.pid}")
    assert tree_digest(tmp_path) == on_disk
    killed = _stop(first, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    with open_store(out, store="hdf5") as store:
        assert len(store) == 8 and not store.complete

    # 2. the resumed run is killed inside its second flush
    mark.unlink()
    proc = _start([*args, "--resume"], env("resize:5"))
    _wait_until(mark.exists, proc)
    assert _stop(proc, signal.SIGKILL).returncode == -signal.SIGKILL

    with open_store(out, store="hdf5") as store:
        kept = len(store)

    # 3. Ctrl-C in the next resumed run: what it computed is flushed and kept
    mark.unlink()
    proc = _start([*args, "--resume"], env("batch:1"))
    _wait_until(mark.exists, proc)
    interrupted = _stop(proc, signal.SIGINT)
    assert_fails_cleanly(interrupted, 130, "rows are kept in", "run again with --resume")
    with open_store(out, store="hdf5") as store:
        assert len(store) == kept + 4 and not store.complete

    # 4. the last resume finishes, and the store equals the uninterrupted run's
    done = invoke_cli(*args, "--resume", "--json")
    assert_succeeds(done)
    summary = json.loads(done.stdout)
    assert summary["resumed"] and summary["rows"] + summary["skipped"] == count
    with open_store(reference) as want, open_store(out, store="hdf5") as got:
        assert got.complete and got.metadata["image_count"] == count
        assert got.paths == want.paths and len(set(got.paths)) == len(got)
        assert got.labels.tolist() == want.labels.tolist()
        assert got.skipped == want.skipped
        # batches fall differently after a resume: float round-off only
        np.testing.assert_allclose(got.read()[0], want.read()[0], rtol=1e-3, atol=5e-5)
    assert not Path(str(out) + ".lock").exists()
    assert tree_digest(images) == before


@pytest.mark.process
def test_sigkill_during_finetuning_then_resume_trains_each_epoch_once(
    corpus: tuple[Path, int, Path, dict[str, Any]],
    plugin_path: Path,
    tmp_path: Path,
    register_plugin: Any,
    tiny: str,
) -> None:
    import fault_plugin

    register_plugin(fault_plugin, "inject")  # for the runs in this process
    images = corpus[0]
    out, mark, logs = (
        tmp_path / "run",
        tmp_path / "paused",
        [tmp_path / "epochs-1", tmp_path / "epochs-2"],
    )
    args = ["finetune", images, *TINY, "-o", out, "-s", "head-only", "--epochs", "3"]
    args += ["--batch-size", "8", "--no-progress"]

    def env(log: Path, pause: str = "") -> dict[str, str]:
        extra = {"FAULTS_PAUSE": pause, "FAULTS_MARK": str(mark), "FAULTS_LOG": str(log)}
        return plugin_env(plugin_path, "inject,tiny", **extra)

    # killed at the end of the second epoch, before its checkpoint: the first one is saved
    proc = _start(args, env(logs[0], "epoch:2"))
    _wait_until(mark.exists, proc, limit=240)
    assert _stop(proc, signal.SIGKILL).returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "last.ckpt.npz").exists()
    assert not (out / "model.keras").exists()

    log = {"FAULTS_LOG": str(logs[1])}
    again = invoke_cli(*args, env=log)  # without --resume: refused, nothing deleted
    assert_fails_cleanly(again, 2, "--resume")
    resumed = invoke_cli(*args, "--resume", "--json", env=log)
    assert_succeeds(resumed)
    assert logs[0].read_text().split() == ["0", "1"]
    assert logs[1].read_text().split() == ["1", "2"]  # only what the checkpoint lacked
    summary = json.loads(resumed.stdout)
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["history"]] == [1, 2, 3]  # none lost, none twice
    assert summary["epochs"] == 3 and (out / "model.keras").exists()


def test_a_journal_cut_short_or_made_with_other_settings_is_not_trusted(tmp_path: Path) -> None:
    from transferkit.jobs.spotcheck_journal import Journal
    from transferkit.jobs.spotcheck_runner import ROW_FIELDS

    def row(name: str, status: str = "ok") -> dict[str, Any]:
        return {**dict.fromkeys(ROW_FIELDS), "backbone": "f", "classifier": name, "status": status}

    journal = Journal(tmp_path, "key-1")
    journal.open([row("a")], timeout=5.0)
    journal.append(row("b"))
    journal.append(row("slow", "timeout"))
    journal.close()
    with open(journal.path, "a") as fh:
        fh.write('{"row": {"backbone": "f", "classifier": "c", "sta')  # killed mid-line
    assert set(Journal(tmp_path, "key-1").load(timeout=5.0)) == {
        ("f", "a"),
        ("f", "b"),
        ("f", "slow"),
    }
    # a timeout row counts only under the same --timeout: a longer one may let the fit finish
    assert set(Journal(tmp_path, "key-1").load(timeout=60.0)) == {("f", "a"), ("f", "b")}
    assert Journal(tmp_path, "key-2").load(timeout=5.0) == {}  # other stores, seed or split
    assert not Path(f"{journal.path}.lock").exists()


def test_the_journal_key_follows_the_stores_and_the_split(tmp_path: Path) -> None:
    from test_train import write_digits

    from transferkit.jobs.spotcheck import FeatureSource
    from transferkit.jobs.spotcheck_journal import journal_key

    store = write_digits(tmp_path / "d.h5", rows=100)
    sources = [FeatureSource("d", str(store))]
    key = journal_key(sources, 0.2, 0, None)
    assert journal_key(sources, 0.2, 0, None) == key
    assert journal_key(sources, 0.3, 0, None) != key and journal_key(sources, 0.2, 1, None) != key
    time.sleep(0.01)
    write_digits(tmp_path / "d2.h5", rows=120)
    os.replace(tmp_path / "d2.h5", store)  # the same path, other features
    assert journal_key(sources, 0.2, 0, None) != key
