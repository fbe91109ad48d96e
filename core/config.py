"""``--config FILE.yaml`` and ``--print-config`` for run commands, as Lightning's CLI has them.

The YAML file holds the same options as the command's flags, under the names a user types
(``batch-size``, ``json``, ``progress``; underscores work too) and the positional arguments under
their names (``images``, ``store-path``); a flag or argument given on the command line overrides
the file. The file can supply every value, required ones included, so what ``--print-config``
prints, fed back alone as ``--config``, runs the same job. An unknown key is a usage error with a
"did you mean" and the allowed keys; an ill-typed value names the key and the allowed values.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .errors import UsageError

CONFIG_PARAMS = ("config", "print_config")
_META_KEY = "transferkit.config"


def _option_params(command: click.Command) -> dict[str, click.Parameter]:
    return {
        p.name: p
        for p in command.params
        if isinstance(p, click.Option) and p.name and p.name not in CONFIG_PARAMS and p.expose_value
    }


def _config_params(command: click.Command) -> list[click.Parameter]:
    """The arguments and options a config file can hold, in the command's order."""
    return [
        p
        for p in command.params
        if isinstance(p, click.Option | click.Argument)
        and p.name
        and p.name not in CONFIG_PARAMS
        and p.expose_value
    ]


def config_key(param: click.Parameter) -> str:
    """The name a user types: an option's first long flag (``json``), an argument's name."""
    if isinstance(param, click.Option):
        for opt in param.opts:
            if opt.startswith("--"):
                return opt[2:]
    return str(param.name).replace("_", "-")


def _aliases(param: click.Parameter) -> dict[str, bool]:
    """Every key naming ``param`` (normalised to dashes), mapped to "the value is inverted"."""
    names = {config_key(param): False, str(param.name).replace("_", "-"): False}
    if isinstance(param, click.Option):
        for opt in param.opts:
            if opt.startswith("--"):
                names.setdefault(opt[2:], False)
        if param.is_flag and param.secondary_opts:
            for opt in param.secondary_opts:
                if opt.startswith("--"):
                    names.setdefault(opt[2:], True)
    return names


def _describe_allowed(param: click.Parameter) -> str:
    if isinstance(param.type, click.Choice):
        return f"one of {list(param.type.choices)}"
    name = param.type.name
    return f"a value of type {name}" + (" (a list)" if param.multiple or param.nargs != 1 else "")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of option names to values."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise UsageError(f"config file {path} is not valid YAML: {problem}") from None
    except RecursionError:
        raise UsageError(f"config file {path} nests too deeply to be a config file") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    return data


_SCALARS = (str, int, float, bool)


def _check_value(raw_key: Any, param: click.Parameter, value: Any) -> None:
    """Refuse what a flag could never hold: a mapping, a list for a single-valued option,
    nested lists, a number for a flag, a bool or a fraction for a whole number."""

    def bad(why: str) -> UsageError:
        return UsageError(f"config key {raw_key!r}: {why}; expected {_describe_allowed(param)}")

    many = param.multiple or param.nargs != 1
    if isinstance(value, dict):
        raise bad("a mapping is not a valid value")
    if isinstance(value, list | tuple):
        if not many:
            raise bad("a list is not valid here, give one value")
        if not all(isinstance(v, _SCALARS) for v in value):
            raise bad("each item of the list must be a single value")
        items = list(value)
    elif value is None:
        if param.default is not None and not many:
            raise bad("it needs a value")
        return
    elif isinstance(value, _SCALARS):
        items = [value]
    else:  # a date, a timestamp or other YAML types
        raise bad(f"a {type(value).__name__} is not a valid value")
    flag = getattr(param, "is_flag", False) or isinstance(param.type, click.types.BoolParamType)
    for item in items:
        if isinstance(item, bool) and not flag:
            raise bad(f"{item!r} is not valid")
        if flag and not isinstance(item, bool | str):
            raise bad(f"{item!r} is not valid (use true or false)")
        if isinstance(param.type, click.types.IntParamType) and isinstance(item, float):
            raise bad(f"{item!r} is not a whole number")


def _cast(ctx: click.Context, param: click.Parameter, raw_key: Any, value: Any) -> Any:
    try:
        if (param.multiple or param.nargs != 1) and isinstance(value, str | int | float):
            value = [value]
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise UsageError(
            f"config key {raw_key!r}: {value!r} is not valid: {exc.message}; "
            f"expected {_describe_allowed(param)}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"config key {raw_key!r}: {value!r} is not valid; expected {_describe_allowed(param)}"
        ) from exc


def config_values(
    ctx: click.Context, command: click.Command, data: Mapping[str, Any]
) -> dict[str, Any]:
    """``data``'s values by parameter name, type-checked; unknown keys get "did you mean"."""
    by_alias: dict[str, tuple[click.Parameter, bool]] = {}
    for param in _config_params(command):
        for alias, inverted in _aliases(param).items():
            by_alias.setdefault(alias, (param, inverted))
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("_", "-")
        if key not in by_alias:
            allowed = [config_key(p) for p in _config_params(command)]
            close = difflib.get_close_matches(key, list(by_alias), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"unknown config key {raw_key!r}{hint}; allowed keys: {', '.join(allowed)}"
            )
        param, inverted = by_alias[key]
        _check_value(raw_key, param, value)
        if value is None:
            continue
        cast = _cast(ctx, param, raw_key, value)
        values[str(param.name)] = (not cast) if inverted else cast
    return values


def _config_path(args: Sequence[str]) -> str | None:
    """The value of ``--config`` among raw command-line ``args`` (the last one wins)."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--config="):
            found = arg.split("=", 1)[1]
    return found


class ConfigCommand(click.Command):
    """A command whose ``--config`` file fills in arguments and options before click checks them.

    The file's values become the context's ``default_map``: the command line wins over the file,
    the file over the defaults, and a required option or argument the file supplies is not missing.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(p.name == "config" for p in self.params):
            path = _config_path(args)
            if path is not None:
                values = config_values(ctx, self, load_config(path))
                ctx.default_map = {**(ctx.default_map or {}), **values}
                ctx.meta[_META_KEY] = path
        return super().parse_args(ctx, args)


def merge_config(
    ctx: click.Context, command: click.Command, data: Mapping[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Values from ``data`` for every value not given on the command line, type-checked.

    For a command that is not a :class:`ConfigCommand` (its required values must be flags).
    """
    merged = dict(kwargs)
    for name, value in config_values(ctx, command, data).items():
        if ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            continue
        merged[name] = value
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)  # `--input-size 48` is a number to whoever reads the file
    return value


def effective_config(command: click.Command, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a call as a config mapping, under the names a user types."""
    return {
        config_key(p): _plain(kwargs[str(p.name)])
        for p in _config_params(command)
        if str(p.name) in kwargs
    }


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command callback (below ``@click.command``) with the config mechanism."""

    @click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML file with the same options and arguments as the command line; "
        "the command line overrides it.",
    )
    @click.option(
        "--print-config",
        is_flag=True,
        default=False,
        help="Print the effective configuration as YAML (a valid --config file) and exit.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, print_config: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        command = ctx.command
        if config and _META_KEY not in ctx.meta:
            kwargs = merge_config(ctx, command, load_config(config), kwargs)
        if print_config:
            import yaml

            effective = effective_config(command, kwargs)
            click.echo(yaml.safe_dump(effective, sort_keys=False), nl=False)
            ctx.exit(0)
        return func(*args, **kwargs)

    return wrapper
