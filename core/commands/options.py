"""The click options of the jobs, derived from their declarations in :mod:`transferkit.options`
(not a command module: nothing to register)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from ..options import Options


class InputSize(click.ParamType):
    """``--input-size N`` or ``HxW``: refused here, on its flag, when
    :func:`transferkit.sizes.parse_input_size` (the one parser of sizes) refuses it; passed on as
    the user wrote it (a config file keeps ``96x64``), and parsed once by the job's options."""

    name = "N|HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..errors import UsageError
        from ..sizes import parse_input_size

        try:
            parse_input_size(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)
        return None if isinstance(value, str) and not value.strip() else value


INPUT_SIZE = InputSize()


class ScalarOrWord(click.ParamType):
    """A number, or one of the words of a ``Literal`` in the field's annotation
    (``--learning-rate 1e-3`` or ``--learning-rate auto``)."""

    def __init__(self, scalar: click.ParamType, words: Sequence[str]) -> None:
        self.scalar, self.words = scalar, tuple(words)
        self.name = "|".join([scalar.name.upper(), *self.words])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() in self.words:
            return value.strip().lower()
        return self.scalar.convert(value, param, ctx)


def _literal_words(annotation: Any) -> list[str]:
    """The words of the ``Literal`` types in ``annotation`` (and in a tuple of it)."""
    words: list[str] = []
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            words += [str(w) for w in typing.get_args(arg)]
        elif typing.get_origin(arg) is tuple:
            words += [w for w in _literal_words(arg) if w not in words]
    return words


_KINDS: dict[str, click.ParamType] = {
    "size": INPUT_SIZE,
    "path": click.Path(),
    "file": click.Path(dir_okay=False),
    "dir": click.Path(file_okay=False),
}
_SCALARS: dict[Any, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _scalar(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``tuple[str, ...]`` -> ``str``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else annotation


def click_option(f: dataclasses.Field[Any], annotation: Any) -> Callable[[Any], Any]:
    """The click option of one field of a job's options (:mod:`transferkit.options`)."""
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    decls = [flag, *meta["aliases"], *([meta["short"]] if meta["short"] else []), f.name]
    kwargs: dict[str, Any] = {"default": f.default, "help": meta["help"]}
    scalar = _scalar(annotation)
    if scalar is bool:
        if meta["negatable"]:
            decls[0] = f"{flag}/--no-{flag[2:]}"
        else:
            kwargs["is_flag"] = True
    elif meta["choices"]:
        kwargs["type"] = click.Choice(list(meta["choices"]))
    elif meta["kind"] in _KINDS:
        kwargs["type"] = _KINDS[meta["kind"]]
    else:
        kwargs["type"] = _SCALARS.get(scalar, click.STRING)
        if _literal_words(annotation):
            kwargs["type"] = ScalarOrWord(kwargs["type"], _literal_words(annotation))
    if meta["kind"] == "many":
        kwargs["multiple"] = True
        kwargs["default"] = ()
    if meta["nargs"] != 1:
        kwargs["nargs"] = meta["nargs"]
    if meta["metavar"]:
        kwargs["metavar"] = meta["metavar"]
    show = meta["show_default"]
    if show is None:
        show = f.default is not None and (scalar is not bool or meta["negatable"])
    kwargs["show_default"] = show
    return click.option(*decls, **kwargs)


def from_fields(
    options: type[Options], *, skip: Sequence[str] = (), only: Sequence[str] | None = None
) -> Callable[[Any], Any]:
    """The click options of the command-line fields of ``options`` (``only`` these, or all but
    ``skip``), in their declared order."""
    types = options.types()
    chosen = [
        f
        for f in dataclasses.fields(options)
        if f.metadata.get("cli", True) and f.name not in skip and (only is None or f.name in only)
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for f in reversed(chosen):
            func = click_option(f, types[f.name])(func)
        return func

    return decorate


def require(**values: Any) -> None:
    """Refuse a missing required option that ``--config`` may also give (so click cannot
    require it): ``require(backbone=backbone, out=out)``."""
    from ..errors import UsageError

    for name, value in values.items():
        if not value:
            flag = name.replace("_", "-")
            raise UsageError(f"missing option --{flag} (give it, or `{flag}:` in --config)")
