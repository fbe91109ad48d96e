"""Property-based tests (hypothesis) of the parsers of untrusted input: the input-size parser,
config files, and the store reader on random schemas and attribute values. Each either gives a
consistent answer or raises a transferkit error, never anything else."""

from __future__ import annotations

import json
import os
import re
import string
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transferkit.errors import TransferkitError, UsageError
from transferkit.sizes import MAX_INPUT_SIDE, MIN_INPUT_SIDE, check_batch_fits, parse_input_size

SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
sides = st.integers(MIN_INPUT_SIDE, MAX_INPUT_SIDE)

# ---------------------------------------------------------------------------- input sizes


@SETTINGS
@given(
    sides,
    sides,
    st.sampled_from(["x", "X", ",", " x ", " , "]),
    st.sampled_from(["", " ", "  "]),
)
def test_every_well_formed_size_parses_to_itself(h: int, w: int, sep: str, pad: str) -> None:
    assert parse_input_size(f"{pad}{h}{sep}{w}{pad}") == (h, w)
    assert parse_input_size(f"{pad}{h}{pad}") == (h, h)
    assert parse_input_size(h) == (h, h)
    assert parse_input_size((h, w)) == parse_input_size([h, w]) == (h, w)
    assert parse_input_size((np.int64(h), np.int32(w))) == (h, w)


@SETTINGS
@given(st.text(alphabet=string.digits + "xX, -+._e\t٣", max_size=12) | st.text(max_size=12))
def test_any_text_parses_to_a_size_in_range_or_is_refused(text: str) -> None:
    try:
        size = parse_input_size(text)
    except UsageError:
        return
    if size is None:
        assert not text.strip()
        return
    h, w = size
    assert min(h, w) >= MIN_INPUT_SIDE and max(h, w) <= MAX_INPUT_SIDE
    # what was accepted is N or HxW, nothing more: digits, one separator, ASCII white space
    canonical = re.sub(r"[ \t\n\r\f\v]", "", text).lower()
    assert set(canonical) <= set(string.digits + "x,"), text
    parts = [int(p) for p in re.split("[x,]", canonical)]
    assert parts in ([h, w], [h]) and (len(parts) == 2 or h == w), text


@SETTINGS
@given(
    st.one_of(
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.lists(st.integers(-5, 5000), max_size=4),
        st.tuples(st.integers(), st.integers()),
        st.tuples(st.floats(), st.floats()),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.binary(max_size=8),
    )
)
def test_any_value_is_a_size_in_range_or_a_usage_error(value: Any) -> None:
    try:
        size = parse_input_size(value)
    except UsageError:
        return
    assert size is not None
    assert isinstance(value, int | list | tuple) and not isinstance(value, bool)
    assert all(MIN_INPUT_SIDE <= s <= MAX_INPUT_SIDE for s in size)


@SETTINGS
@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_sizes_out_of_range_are_refused_with_the_bound(h: int, w: int) -> None:
    inside = min(h, w) >= MIN_INPUT_SIDE and max(h, w) <= MAX_INPUT_SIDE
    if inside:
        assert parse_input_size(f"{h}x{w}") == (h, w)
        return
    with pytest.raises(UsageError, match="too small|too large"):
        parse_input_size(f"{h}x{w}")


@SETTINGS
@given(sides, sides, st.integers(1, 4096), st.integers(1 << 20, 1 << 40))
def test_a_batch_is_refused_exactly_when_its_input_passes_a_quarter_of_memory(
    h: int, w: int, batch: int, memory: int
) -> None:
    need = h * w * 3 * 4 * batch
    if need > memory // 4:
        with pytest.raises(UsageError, match="--batch-size or --input-size"):
            check_batch_fits((h, w), batch, memory=memory)
    else:
        check_batch_fits((h, w), batch, memory=memory)


# ---------------------------------------------------------------------------- config files

OPTION_KEYS = ["backbone", "batch-size", "pooling", "input-size", "shuffle", "seed", "store"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
config_maps = st.dictionaries(
    st.sampled_from(OPTION_KEYS) | st.text(max_size=6), values, max_size=4
)


@pytest.fixture(scope="module")
def photos() -> Any:
    with tempfile.TemporaryDirectory() as root:
        yield root


def _print_config(photos: str, config: Path) -> Any:
    from transferkit.cli import build_cli

    return CliRunner().invoke(
        build_cli(), ["extract", photos, "--config", str(config), "--print-config"]
    )


@SETTINGS
@given(config_maps)
def test_any_config_mapping_is_used_or_refused(photos: str, data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "job.yaml"
        config.write_text(yaml.safe_dump(data))
        result = _print_config(photos, config)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            data,
            result.output,
        )
        assert result.exit_code in (0, 2), (data, result.output)
        if result.exit_code == 2:
            assert "Error:" in result.output
            return
        # what is printed is a config file that gives the same configuration again
        printed = Path(tmp) / "printed.yaml"
        printed.write_text(result.output)
        again = _print_config(photos, printed)
        assert again.exit_code == 0 and again.output == result.output, again.output


@SETTINGS
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_any_config_bytes_are_used_or_refused(photos: str, blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "job.yaml"
        config.write_bytes(blob)
        result = _print_config(photos, config)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            blob,
            result.output,
        )
        assert result.exit_code in (0, 2), (blob, result.output)


# ---------------------------------------------------------------------------- store reader

attr_values = st.one_of(
    st.integers(-5, 50),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(alphabet=string.printable, max_size=10),
    st.recursive(
        st.integers(-3, 30) | st.text(max_size=4) | st.booleans() | st.none(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
        ),
        max_leaves=6,
    ).map(lambda v: "json:" + json.dumps(v)),
    st.text(alphabet='[]{}",:0123456789', max_size=12).map(lambda t: "json:" + t),
)
ATTR_KEYS = [
    "rows",
    "feature_dim",
    "complete",
    "skipped",
    "input_size",
    "backbone",
    "pooling",
    "schema_version",
]


MUTATIONS = (
    "drop-labels",
    "drop-names",
    "drop-paths",
    "drop-rows-attr",
    "features-text",
    "features-3d",
    "features-1d",
    "features-int",
    "features-no-columns",
    "labels-float",
    "labels-2d",
    "label-outside-names",
    "label-negative",
    "rows-attr-more",
    "rows-attr-less",
    "labels-shorter",
    "features-longer",
    "feature-dim-off",
    "names-repeated",
    "reserved-attr",
)


@st.composite
def store_schemas(draw: Any) -> dict[str, Any]:
    """A valid store (random size, width, classes, labels, extra attributes) with up to two
    random faults applied: missing arrays, wrong types and shapes, disagreeing row counts,
    labels outside the names, attributes of any type or nesting."""
    n, d, k = draw(st.integers(0, 12)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), np.int64)
    arrays: dict[str, Any] = {
        "features": np.arange(n * d, dtype=np.float32).reshape(n, d),
        "labels": labels,
        "label_names": np.array([f"c{i}" for i in range(k)], dtype=object),
        "paths": np.array([f"img{i}.png" for i in range(n)], dtype=object),
    }
    attrs: dict[str, Any] = {"rows": n, "feature_dim": d, "complete": draw(st.booleans())}
    extra = st.text(string.ascii_lowercase, min_size=1, max_size=5)
    attrs.update(draw(st.dictionaries(extra, attr_values, max_size=2)))
    for fault in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        if fault.startswith("drop-") and fault != "drop-rows-attr":
            arrays.pop({"drop-names": "label_names"}.get(fault, fault[5:]), None)
        elif fault == "drop-rows-attr":
            attrs.pop("rows", None)
        elif fault == "features-text":
            arrays["features"] = np.array(["x"] * n, dtype=object)
        elif fault == "features-3d":
            arrays["features"] = np.zeros((n, d, 2), np.float32)
        elif fault == "features-1d":
            arrays["features"] = np.zeros(n, np.float32)
        elif fault == "features-int":
            arrays["features"] = np.ones((n, d), np.int64)
        elif fault == "features-no-columns":
            arrays["features"] = np.zeros((n, 0), np.float32)
        elif fault == "labels-float" and "labels" in arrays:
            arrays["labels"] = arrays["labels"].astype(np.float64)
        elif fault == "labels-2d" and "labels" in arrays:
            arrays["labels"] = arrays["labels"].reshape(-1, 1)
        elif fault in ("label-outside-names", "label-negative") and len(arrays.get("labels", ())):
            arrays["labels"] = arrays["labels"].copy()  # (an earlier fault may have emptied it)
            row = draw(st.integers(0, len(arrays["labels"]) - 1))
            arrays["labels"][row] = k if fault[6] == "o" else -1
        elif fault == "rows-attr-more":
            attrs["rows"] = n + draw(st.integers(1, 3))
        elif fault == "rows-attr-less":
            attrs["rows"] = draw(st.integers(0, n))
        elif fault == "labels-shorter" and n and "labels" in arrays:
            arrays["labels"] = arrays["labels"][:-1]
        elif fault == "features-longer" and arrays["features"].ndim == 2:
            arrays["features"] = np.concatenate([arrays["features"], arrays["features"][:1] + 1])
        elif fault == "feature-dim-off":
            attrs["feature_dim"] = d + 1
        elif fault == "names-repeated":
            arrays["label_names"] = np.array(["c0"] * (k + 1), dtype=object)
        elif fault == "reserved-attr":
            attrs[draw(st.sampled_from(ATTR_KEYS))] = draw(attr_values)
    return {"arrays": arrays, "attrs": attrs, "format": draw(st.sampled_from(["hdf5", "zarr"]))}


def _write_hdf5(path: str, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, data in arrays.items():
            if data.dtype == object:
                f.create_dataset(
                    name, data=data.astype(str).astype(object), dtype=h5py.string_dtype()
                )
            else:
                f[name] = data
        for key, value in attrs.items():
            f.attrs[key] = value


def _write_zarr(path: str, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(path, mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in arrays.items():
            dtype = str if data.dtype == object else data.dtype
            array = group.create_array(
                name,
                shape=data.shape,
                dtype=dtype,
                chunks=tuple(max(1, s) for s in data.shape) or None,
            )
            if data.size:
                array[...] = data.astype(str) if data.dtype == object else data
    group.attrs.update(attrs)


@settings(max_examples=100, deadline=None)
@given(store_schemas())
def test_any_store_reads_consistently_or_raises_a_transferkit_error(schema: dict[str, Any]) -> None:
    from transferkit.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.h5" if schema["format"] == "hdf5" else "s.zarr")
        (_write_hdf5 if schema["format"] == "hdf5" else _write_zarr)(
            path, schema["arrays"], schema["attrs"]
        )
        try:
            reader = open_store(path)
        except TransferkitError:
            return
        with reader:
            n = len(reader)
            names = reader.label_names
            x, y = reader.read()
            assert x.dtype == np.float32 and x.shape == (n, reader.feature_dim)
            assert y.dtype == np.int64 and y.shape == (n,)
            assert np.array_equal(reader.labels, y)
            assert all(0 <= v < len(names) for v in y.tolist())
            assert len(reader.paths) in (0, n)
            assert isinstance(reader.metadata, dict) and isinstance(reader.complete, bool)
            assert all(isinstance(p, str) and isinstance(r, str) for p, r in reader.skipped)
            if n:
                idx = np.random.default_rng(0).integers(0, n, size=2 * n)
                xr, yr = reader.read_rows(idx)
                assert np.array_equal(xr, x[idx]) and np.array_equal(yr, y[idx])
                batches = list(reader.iter_batches(3))
                assert np.array_equal(np.concatenate([b[0] for b in batches]), x)
