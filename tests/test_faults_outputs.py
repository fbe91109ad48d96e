"""Fault suite, outputs: ``--overwrite`` never deletes what transferkit did not make, and an output
that cannot be written (a read-only or full file system, a missing parent folder) ends in one
line, leaves no temporary file, and keeps a store's committed rows for ``--resume``.

Every case runs the command line in this process (click's ``CliRunner``): a refusal is an exit
code, one line on stderr and an unchanged file tree, all visible here; the user's files are
checksummed before and after. The file-system cases mount a small or a read-only ``tmpfs`` and
need root (CI runs as root); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_faults import assert_fails_cleanly, assert_succeeds, invoke_cli, tree_digest
from imagefiles import make_folder

from transferkit.errors import UsageError

# a real, offline backbone that needs no plugin registration; 64 px and flatten pooling give
# 5120-d rows, so a few dozen images fill a 600 KiB tmpfs
BACKBONE = ["-b", "efficientnet-lite0", "--input-size", "64", "--pooling", "flatten"]
FAST = ["--batch-size", "4", "--buffer-rows", "4", "--no-progress"]


def extract_args(images: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", str(images), *BACKBONE, "-o", str(out), *FAST, *extra]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Failed with ``code``, no traceback, exactly one error line holding every needle."""
    assert_fails_cleanly(result, code, *needles)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary names transferkit's and Zarr's writers use (none may survive a failure)."""
    found = []
    for _dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            if any(mark in name for mark in (".tmp", ".old-", ".partial", "-probe-")) or (
                name.endswith(".lock")
            ):
                found.append(name)
    return found


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_folder(root / "photos", per_class=24, size=40)
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the corpus, extracted in one clean run."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    assert_succeeds(invoke_cli(*extract_args(corpus / "photos", out)))
    return out


@pytest.fixture(scope="module")
def h5_reference(reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference store written again as HDF5 (one file)."""
    from transferkit.store import create_store, open_store

    out = tmp_path_factory.mktemp("h5") / "ref.h5"
    reserved = {"rows", "complete", "skipped", "schema_version", "feature_dim"}
    with open_store(reference) as ref:
        x, y = ref.read()
        metadata = {k: v for k, v in ref.metadata.items() if k not in reserved}
        with create_store(
            out, feature_dim=ref.feature_dim, label_names=ref.label_names, metadata=metadata
        ) as writer:
            writer.append(x, y, ref.paths)
    return out


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    """A user's folder with files of their own, including names transferkit writes."""
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "report.csv").write_text("my,own,report\n")
    (folder / "model.keras").write_bytes(b"not yours")
    (folder / "sub" / "data.bin").write_bytes(os.urandom(256))
    return folder


def _mount_or_skip(where: Path, options: str) -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux (CI runs as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    _mount_or_skip(where, options)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` until a write fails."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


# ----------------------------------------------------------------------------- extract


def test_extract_overwrite_refuses_every_path_it_did_not_make(
    corpus: Path, user_files: Path, tmp_path: Path
) -> None:
    photos = corpus / "photos"
    before, mine = tree_digest(corpus), tree_digest(user_files)
    (tmp_path / "link").symlink_to(photos)
    user_h5 = tmp_path / "theirs.h5"
    user_h5.write_bytes(b"\x89HDF\r\n\x1a\n and then not much")
    cases = [
        (photos, "zarr", "is the input"),
        (tmp_path / "link", "zarr", "is the input"),
        (photos / "cat" / "f.zarr", "zarr", "lies inside the input"),
        (corpus, "zarr", "contains the input"),
        (user_files, "hdf5", "not a hdf5 store written by transferkit"),
        (user_files, "zarr", "not a zarr store written by transferkit"),
        (user_h5, "hdf5", "not a hdf5 store written by transferkit"),
    ]
    for out, fmt, why in cases:
        result = invoke_cli(*extract_args(photos, out, "--store", fmt, "--overwrite"))
        line = assert_one_line(result, 2, why)
        assert str(out) in line
    assert tree_digest(corpus) == before
    assert tree_digest(user_files) == mine
    assert user_h5.read_bytes().startswith(b"\x89HDF")


def test_extract_overwrite_refuses_an_output_holding_images_of_a_list(
    corpus: Path, tmp_path: Path
) -> None:
    photos = corpus / "photos"
    listing = tmp_path / "list.csv"
    rows = [f"{p},{p.parent.name}" for p in sorted((photos / "rocket").glob("*.jpg"))]
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    before = tree_digest(corpus)
    result = invoke_cli(*extract_args(listing, photos / "rocket", "--store", "zarr", "--overwrite"))
    assert_one_line(result, 2, "contains the input")
    assert tree_digest(corpus) == before


@pytest.mark.slow
def test_extract_overwrite_replaces_a_transferkit_store_and_written_images(
    corpus: Path, reference: Path, tmp_path: Path
) -> None:
    import zarr

    from transferkit.outputs import mark_folder
    from transferkit.store import open_store

    out = tmp_path / "f.zarr"
    shutil.copytree(reference, out)
    zarr.open_group(str(out), mode="r+").attrs["note"] = "the old store"
    shown = mark_folder(tmp_path / "shown", "images")
    (shown / "old.png").write_bytes(b"old")
    before = tree_digest(corpus)
    result = invoke_cli(
        *extract_args(corpus / "photos", out, "--overwrite", "--write-images", str(shown))
    )
    assert_succeeds(result)
    with open_store(out) as new, open_store(reference) as ref:
        assert "note" not in new.metadata and new.complete and len(new) == len(ref)
        np.testing.assert_allclose(new.read()[0], ref.read()[0], rtol=1e-5, atol=1e-6)
    assert not (shown / "old.png").exists()
    assert len(list(shown.rglob("*.png"))) == 48
    assert tree_digest(corpus) == before
    assert leftovers(tmp_path) == []


def test_write_images_refuses_an_input_and_a_users_folder(
    corpus: Path, user_files: Path, tmp_path: Path
) -> None:
    photos = corpus / "photos"
    before, mine = tree_digest(corpus), tree_digest(user_files)
    for folder, why in ((photos, "is the input"), (user_files, "did not make")):
        result = invoke_cli(*extract_args(photos, tmp_path / "f.h5", "--write-images", str(folder)))
        assert_one_line(result, 2, "--write-images folder", why)
    assert not (tmp_path / "f.h5").exists()
    assert tree_digest(corpus) == before and tree_digest(user_files) == mine


# ----------------------------------------------------------------------------- train / stream


@pytest.mark.parametrize("command", ["train", "stream"])
def test_saved_model_is_replaced_only_with_overwrite_and_only_if_transferkit_saved_it(
    command: str, reference: Path, h5_reference: Path, user_files: Path, tmp_path: Path
) -> None:
    from transferkit.models import is_saved_model, load_model

    store, folder_store = tmp_path / "f.h5", tmp_path / "f.zarr"
    shutil.copy(h5_reference, store)
    shutil.copytree(reference, folder_store)
    classifier = ["-c", "logistic-regression" if command == "train" else "sgd"]
    base = [command, str(store), *classifier]
    stored, folder_stored = store.read_bytes(), tree_digest(folder_store)

    # the input itself, and a path inside it (a Zarr store is a folder)
    inside = [command, str(folder_store), *classifier, "--out", str(folder_store / "m.skops")]
    assert_one_line(invoke_cli(*base, "--out", str(store), "--overwrite"), 2, "is the input")
    assert_one_line(invoke_cli(*inside, "--overwrite"), 2, "lies inside the input")
    assert tree_digest(folder_store) == folder_stored
    # a user's folder, a user's file
    assert_fails_cleanly(invoke_cli(*base, "--out", str(user_files), "--overwrite"), 2)
    theirs = user_files / "theirs.skops"
    theirs.write_bytes(b"PK\x03\x04 my own zip")
    mine = tree_digest(user_files)
    replaced = invoke_cli(*base, "--out", str(theirs), "--overwrite")
    assert_one_line(replaced, 2, "not a model saved by transferkit")
    assert tree_digest(user_files) == mine

    # a model transferkit saved: refused without --overwrite, replaced with it
    model = tmp_path / "models" / "m.skops"  # the parent folder is created
    assert_succeeds(invoke_cli(*base, "--out", str(model)))
    first = model.read_bytes()
    assert is_saved_model(model)
    assert_one_line(invoke_cli(*base, "--out", str(model)), 2, "--overwrite")
    assert model.read_bytes() == first
    assert_succeeds(invoke_cli(*base, "--out", str(model), "--seed", "3", "--overwrite"))
    assert model.read_bytes() != first and load_model(model).classifier == classifier[1]
    assert store.read_bytes() == stored
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- finetune


FINETUNE = ["-b", "efficientnet-lite0", "--input-size", "32", "-s", "head-only", "--epochs", "1"]


def test_finetune_overwrite_refuses_every_folder_it_did_not_make(
    corpus: Path, user_files: Path
) -> None:
    photos = corpus / "photos"
    before, mine = tree_digest(corpus), tree_digest(user_files)
    cases = [
        (photos, "is the input"),
        (photos / "cat" / "run", "lies inside the input"),
        (corpus, "contains the input"),
        (user_files, "transferkit did not make"),
    ]
    for out, why in cases:
        for flags in (["--overwrite"], []):
            result = invoke_cli("finetune", str(photos), *FINETUNE, "-o", str(out), *flags)
            assert str(out) in assert_one_line(result, 2, why)
    assert tree_digest(corpus) == before and tree_digest(user_files) == mine


def test_finetune_overwrite_replaces_a_run_folder_it_made(corpus: Path, tmp_path: Path) -> None:
    from transferkit.outputs import MARKER, folder_kind, mark_folder

    run = mark_folder(tmp_path / "run", "finetune-run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt.npz").write_bytes(b"an old checkpoint")
    (run / "model.keras").write_bytes(b"an old model")
    before = tree_digest(corpus)
    refused = invoke_cli("finetune", str(corpus / "photos"), *FINETUNE, "-o", str(run))
    assert_one_line(refused, 2, "--resume", "--overwrite")
    result = invoke_cli(
        "finetune",
        str(corpus / "photos"),
        *FINETUNE,
        "-o",
        str(run),
        "--overwrite",
        "--no-progress",
    )
    assert_succeeds(result)
    assert (run / "model.keras").read_bytes()[:2] == b"PK"
    assert (run / "checkpoints" / "last.ckpt.npz").read_bytes() != b"an old checkpoint"
    assert (run / MARKER).is_file() and folder_kind(run) == "finetune-run"
    assert tree_digest(corpus) == before
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- spotcheck / demo


def test_spotcheck_and_demo_refuse_folders_they_did_not_make(
    reference: Path, corpus: Path, user_files: Path, tmp_path: Path
) -> None:
    store = tmp_path / "f.zarr"
    shutil.copytree(reference, store)
    stored, mine, images = tree_digest(store), tree_digest(user_files), tree_digest(corpus)
    base = ["spotcheck", str(store), "--classifiers", "logistic-regression"]
    cases = [
        (store, "is the input"),
        (store / "report", "lies inside the input"),
        (tmp_path, "contains the input"),
        (user_files, "transferkit did not make"),
    ]
    for out, why in cases:
        assert str(out) in assert_one_line(invoke_cli(*base, "--out", str(out)), 2, why)
    # the feature cache may not lie inside the image folder it caches
    cached = invoke_cli(
        "spotcheck",
        str(corpus / "photos"),
        "--backbones",
        "efficientnet-lite0@32",
        "--cache-dir",
        str(corpus / "photos" / "cache"),
    )
    assert_one_line(cached, 2, "feature cache", "lies inside the input")
    from transferkit.outputs import mark_folder

    report = mark_folder(tmp_path / "a-report", "spotcheck-report")
    for out, why in ((user_files, "transferkit did not make"), (report, "not a demo folder")):
        assert_one_line(invoke_cli("demo", "--out", str(out)), 2, "demo folder", why)
    assert tree_digest(store) == stored and tree_digest(user_files) == mine
    assert tree_digest(corpus) == images


def test_spotcheck_replaces_its_own_report(reference: Path, tmp_path: Path) -> None:
    from transferkit.outputs import mark_folder

    report = mark_folder(tmp_path / "report", "spotcheck-report")
    (report / "report.csv").write_text("an old report\n")
    result = invoke_cli(
        "spotcheck", str(reference), "--classifiers", "logistic-regression", "--out", str(report)
    )
    assert_succeeds(result)
    table = (report / "report.csv").read_text()
    assert table != "an old report\n" and "logistic-regression" in table
    assert {"report.json", "report.html", "heatmap.png"} <= {p.name for p in report.iterdir()}
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- file systems


def test_outputs_on_a_read_only_file_system_fail_in_one_line(
    reference: Path, corpus: Path, tmp_path: Path
) -> None:
    photos = corpus / "photos"
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        cases = [
            extract_args(photos, ro / "f.zarr"),
            extract_args(photos, ro / "missing" / "parent" / "f.h5"),
            ["train", str(reference), "-c", "logistic-regression", "--out", str(ro / "m.skops")],
            ["stream", str(reference), "-c", "sgd", "--out", str(ro / "sub" / "m.skops")],
            ["spotcheck", str(reference), "--classifiers", "logistic-regression", "--out",
             str(ro / "report")],
            ["finetune", str(photos), *FINETUNE, "-o", str(ro / "run")],
            ["demo", "--out", str(ro / "demo")],
            ["spotcheck", str(photos), "--backbones", "efficientnet-lite0@32", "--cache-dir",
             str(ro / "cache")],
        ]  # fmt: skip
        for args in cases:
            line = assert_one_line(invoke_cli(*args), 1, "Read-only file system")
            assert str(ro) in line
        assert os.listdir(ro) == []


def test_a_full_disk_fails_in_one_line_and_leaves_no_temporary_file(
    reference: Path, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "full", "size=600k") as full:
        filler = fill(full)
        cases = [
            ["train", str(reference), "-c", "logistic-regression", "--out", str(full / "m.skops")],
            ["stream", str(reference), "-c", "river-logreg", "--out", str(full / "m.pkl")],
            ["spotcheck", str(reference), "--classifiers", "logistic-regression", "--out",
             str(full / "report")],
        ]  # fmt: skip
        for args in cases:
            line = assert_one_line(invoke_cli(*args), 1, "No space left on device")
            assert str(full) in line
            assert leftovers(full) == []
        assert not (full / "m.skops").exists() and not (full / "m.pkl").exists()
        assert os.listdir(full) == [filler.name]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_extraction_on_a_full_disk_keeps_its_rows_and_resumes_once_space_is_freed(
    corpus: Path, reference: Path, tmp_path: Path, suffix: str
) -> None:
    from transferkit.store import open_store

    photos = corpus / "photos"
    before = tree_digest(corpus)
    # HDF5 keeps room for a whole chunk (about 1 MiB) free before each block
    size = "size=600k" if suffix == ".zarr" else "size=1700k"
    with tmpfs(tmp_path / "small", size) as small:
        out = small / f"f{suffix}"
        result = invoke_cli(*extract_args(photos, out))
        line = assert_one_line(result, 1, "No space left on device", "--resume")
        assert str(out) in line
        with open_store(out) as partial:
            kept = len(partial)
            assert 0 < kept < 48 and not partial.complete
        assert f"{kept} rows are kept" in line
        assert leftovers(small) == []
        # free space: the same tmpfs, remounted bigger (its files stay)
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        resumed = invoke_cli(*extract_args(photos, out, "--resume"))
        assert_succeeds(resumed)
        assert f"Resumed: {kept} images were already done" in resumed.stdout
        with open_store(out) as done, open_store(reference) as ref:
            assert done.complete and len(done) == len(ref) == 48
            assert done.paths == ref.paths
            np.testing.assert_array_equal(done.labels, ref.labels)
            np.testing.assert_allclose(done.read()[0], ref.read()[0], rtol=1e-5, atol=1e-6)
        assert leftovers(small) == []
    assert tree_digest(corpus) == before


# ----------------------------------------------------------------------------- the helpers


def test_atomic_path_leaves_the_old_file_and_no_temporary_file_on_error(tmp_path: Path) -> None:
    from transferkit.outputs import atomic_path, atomic_write_text

    target = atomic_write_text(tmp_path / "deep" / "er" / "r.json", "old")  # parents created
    with pytest.raises(RuntimeError, match="midway"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("midway")
    assert target.read_text() == "old" and os.listdir(target.parent) == ["r.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["r.json"]


def test_replacing_puts_the_old_folder_back_when_making_the_new_one_fails(tmp_path: Path) -> None:
    from transferkit.outputs import replacing

    old = tmp_path / "out"
    old.mkdir()
    (old / "a").write_text("old")
    with pytest.raises(OSError), replacing(old):
        old.mkdir()
        (old / "b").write_text("half")
        raise OSError(28, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(old) == ["a"]
    with replacing(old):
        old.mkdir()
        (old / "b").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(old) == ["b"]


def test_output_errors_name_the_path_and_the_reason_in_one_line(tmp_path: Path) -> None:
    from transferkit.outputs import OutputError, check_outside_inputs, writing

    h5py_style = RuntimeError(
        "Unable to flush file (file write failed: time = now\n, filename = 'f.h5', errno = 28, "
        "error message = 'No space left on device', buf = 0x1)"
    )
    with pytest.raises(OutputError) as info, writing(tmp_path / "f.h5"):
        raise h5py_style
    assert str(info.value) == (
        f"cannot write {tmp_path / 'f.h5'}: No space left on device; free some space and run again"
    )
    with pytest.raises(ValueError), writing(tmp_path):  # not an OS error: left alone
        raise ValueError("a bug")
    (tmp_path / "photos").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "photos")
    with pytest.raises(UsageError, match="is the input"):
        check_outside_inputs(tmp_path / "alias", [tmp_path / "photos"])
    check_outside_inputs(tmp_path / "photos-features.zarr", [tmp_path / "photos"])


def test_the_python_api_refuses_to_overwrite_a_users_folder(tmp_path: Path) -> None:
    from transferkit.store import create_store

    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a zarr store written by transferkit"):
        create_store(folder, feature_dim=2, label_names=["a"], mode="overwrite")
    assert os.listdir(folder) == ["keep.txt"] and not (tmp_path / "mine.zarr.lock").exists()


def test_the_command_line_turns_a_stray_os_error_into_one_line() -> None:
    import click
    from click.testing import CliRunner

    from transferkit.cli import TransferkitGroup

    @click.group(cls=TransferkitGroup)
    def group() -> None: ...

    @group.command("save")
    def save() -> None:
        raise OSError(30, "Read-only file system", "/mnt/ro/out.bin")

    @group.command("bug")
    def bug() -> None:
        raise RuntimeError("a bug, not an output error")

    result = CliRunner().invoke(group, ["save"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: /mnt/ro/out.bin: Read-only file system"
    crashed = CliRunner().invoke(group, ["bug"])
    assert isinstance(crashed.exception, RuntimeError)  # a bug still shows as one


def test_overwrite_replaces_a_damaged_hdf5_store_it_wrote_but_not_a_locked_one(
    tmp_path: Path,
) -> None:
    from transferkit.store import StoreLockedError, create_store, open_store

    path = tmp_path / "f.h5"
    with create_store(path, feature_dim=3, label_names=["a", "b"]) as writer:
        writer.append(np.ones((2, 3)), [0, 1], ["x", "y"])
    data = bytearray(path.read_bytes())
    data[8:48] = bytes(40)  # the superblock, as a writer killed mid-write can leave it
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="--overwrite"):
        create_store(path, feature_dim=3, label_names=["a", "b"], mode="resume")
    with create_store(path, feature_dim=3, label_names=["a", "b"], mode="overwrite") as writer:
        writer.append(np.zeros((1, 3)), [1], ["z"])
    with open_store(path) as reader:
        assert reader.paths == ["z"] and reader.complete
    # a store another live process is writing is refused as such, before any check of its kind
    (tmp_path / "f.h5.lock").write_text(str(os.getppid()))
    with pytest.raises(StoreLockedError, match="being written by process"):
        create_store(path, feature_dim=3, label_names=["a", "b"], mode="overwrite")
    assert (tmp_path / "f.h5").exists()


def test_resume_refuses_a_group_with_the_same_array_names_that_it_did_not_write(
    tmp_path: Path,
) -> None:
    import zarr

    from transferkit.store import create_store

    path = tmp_path / "theirs.zarr"
    group = zarr.open_group(str(path), mode="w")
    for name in ("features", "labels", "paths", "label_names"):
        group.create_array(name, shape=(4,), dtype="int64")[:] = np.arange(4)
    before = tree_digest(path)
    with pytest.raises(UsageError, match="not a store transferkit wrote"):
        create_store(path, feature_dim=3, label_names=["a"], mode="resume")
    assert tree_digest(path) == before and not (tmp_path / "theirs.zarr.lock").exists()
