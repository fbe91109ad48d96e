"""A store's attributes and text: how metadata is encoded, and the one check of what a store says.

Scalars are stored as they are; anything else as ``"json:" + JSON``. Every reader and every
resumed writer decodes the attributes through :func:`checked_attrs`, which refuses a damaged,
hostile or foreign store with one clear :class:`StoreDamagedError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError, UsageError

SCHEMA_VERSION = 1
SHARDING = "sharding"  # attribute of a store that shards are writing: layout and journal
# attributes the store keeps for itself: a caller's metadata may not use these keys
RESERVED_ATTRS = ("rows", "complete", "skipped", "schema_version", "feature_dim", SHARDING)
# metadata keys whose type a reader checks: a store that says otherwise is refused
_INT_ATTRS = ("rows", "feature_dim", "schema_version", "image_count")
_MAX_ATTR_DEPTH = 32


class StoreDamagedError(TransferkitError):
    """A file opened as a store is not one transferkit can read: damaged, hostile or foreign."""


def encode_attr(value: Any) -> Any:
    """``value`` as an attribute: a scalar as it is, anything else as ``json:`` text."""
    if isinstance(value, bool | int | float | str) and not isinstance(value, np.generic):
        return value
    return "json:" + json.dumps(value, default=_json_default)


def decode_attr(value: Any) -> Any:
    """An attribute as :func:`encode_attr` wrote it, back to its value."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    return str(value)


def _depth(value: Any, limit: int = _MAX_ATTR_DEPTH) -> int:
    """How deeply lists and dicts nest in ``value`` (stops counting past ``limit``)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            stack.extend(
                (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def checked_attrs(path: str, raw: Any) -> dict[str, Any]:
    """The store's attributes decoded, each checked: one clear error for anything malformed."""
    attrs: dict[str, Any] = {}
    for key, value in raw:
        key = str(key)
        try:
            decoded = decode_attr(value)
        except (ValueError, RecursionError) as exc:  # bad JSON, nesting past Python's stack
            raise StoreDamagedError(
                f"{path}: attribute {key!r} cannot be decoded ({type(exc).__name__}); the store "
                f"is damaged or was not written by transferkit"
            ) from None
        if isinstance(decoded, np.ndarray):
            decoded = decoded.tolist()
        if _depth(decoded) > _MAX_ATTR_DEPTH:
            raise StoreDamagedError(
                f"{path}: attribute {key!r} nests deeper than {_MAX_ATTR_DEPTH} levels"
            )
        attrs[key] = decoded
    for key in _INT_ATTRS:
        if key in attrs:
            value = attrs[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise StoreDamagedError(
                    f"{path}: attribute {key!r} must be a whole number >= 0, not {value!r}"
                )
    if "complete" in attrs and not isinstance(attrs["complete"], bool | int):
        raise StoreDamagedError(f"{path}: attribute 'complete' must be true or false")
    skipped = attrs.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s) for s in skipped
    ):
        raise StoreDamagedError(f"{path}: attribute 'skipped' must be a list of [path, reason]")
    for key in ("backbone", "pooling", "weights", "task"):
        if key in attrs and attrs[key] is not None and not isinstance(attrs[key], str):
            raise StoreDamagedError(f"{path}: attribute {key!r} must be text, not {attrs[key]!r}")
    if attrs.get("input_size") not in (None, ""):
        from ..sizes import parse_input_size

        try:
            parse_input_size(attrs["input_size"], minimum=1)
        except UsageError as exc:
            raise StoreDamagedError(f"{path}: attribute 'input_size': {exc}") from None
    return attrs


def path_text(path: Any) -> str:
    """``path`` as the text a store records (paths, skipped files, class names).

    A file name whose bytes are not valid UTF-8 reaches Python with each bad byte as a lone
    surrogate (``surrogateescape``); HDF5 and Zarr hold only UTF-8, so each such byte is
    recorded as ``\\xNN`` (``backslashreplace``). The name is recorded faithfully and the same
    name always gives the same text (a resume matches it), but a name holding a literal
    ``\\xNN`` cannot be told from one holding that byte.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return os.fsencode(text).decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no file name can hold
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def text_list(values: Any) -> list[str]:
    """An array of text (bytes or str, as a format returns it) as a list of str."""
    out = []
    for v in np.asarray(values).tolist():
        out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
    return out
