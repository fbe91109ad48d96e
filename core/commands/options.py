"""Options several commands share (not a command module: nothing to register)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


class InputSize(click.ParamType):
    """``--input-size N`` or ``HxW``, checked by :func:`transferkit.sizes.parse_input_size` (the
    one parser of sizes) and passed on as text: ``"96"`` or ``"96x64"``."""

    name = "N|HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..errors import UsageError
        from ..recipe import size_text
        from ..sizes import parse_input_size

        try:
            return size_text(parse_input_size(value)) or None
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


INPUT_SIZE = InputSize()


def input_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--input-size N|HxW`` (default: the backbone's own), the same on every command."""
    return click.option(
        "--input-size",
        type=INPUT_SIZE,
        default=None,
        help="N or HxW, e.g. 224 or 224x160 (default: the backbone's own).",
    )(func)


def runtime_options(precision_default: str | None = "32") -> Callable[[Any], Any]:
    """``--runtime NAME|auto`` and ``--precision 32|bf16`` (``precision_default=None``: the
    precision of what is being used, e.g. a saved model's)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option(
            "--precision",
            type=click.Choice(["32", "bf16"]),
            default=precision_default,
            show_default=precision_default is not None,
            help="Arithmetic of the network: 32-bit, or bf16 where the CPU has it natively "
            "(different features; see docs/runtimes.md)."
            + ("" if precision_default else " Default: the model's own."),
        )(func)
        return click.option(
            "--runtime",
            default="auto",
            show_default=True,
            help="Inference runtime (see `transferkit runtimes`): keras, openvino, litert, or "
            "auto (the fastest available that is exact at 32-bit).",
        )(func)

    return decorate


def model_out_options(example: str) -> Callable[[Any], Any]:
    """``--overwrite`` (for ``--out``) and ``--param KEY=VALUE`` of the commands that fit and
    save a classifier (``train``, ``stream``); ``example`` is the help's ``--param`` example."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        func = click.option(
            "--param",
            "-p",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            help=f"Set a parameter of the classifier (one of its get_params()), e.g. {example}.",
        )(func)
        return click.option(
            "--overwrite", is_flag=True, help="Replace --out if it is a model transferkit saved."
        )(func)

    return decorate
