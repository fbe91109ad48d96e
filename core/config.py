"""``--config FILE.yaml`` and ``--print-config`` for run commands, as Lightning's CLI has them.

The YAML file holds the same options as the command's flags (dashes or underscores); a flag given
on the command line overrides the file; an unknown or ill-typed key is a usage error naming the key
and the allowed values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .errors import UsageError

CONFIG_PARAMS = ("config", "print_config")


def _option_params(command: click.Command) -> dict[str, click.Parameter]:
    return {
        p.name: p
        for p in command.params
        if isinstance(p, click.Option) and p.name and p.name not in CONFIG_PARAMS and p.expose_value
    }


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


def merge_config(
    ctx: click.Context, command: click.Command, data: Mapping[str, Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Values from ``data`` for every option not given on the command line, type-checked."""
    params = _option_params(command)
    merged = dict(kwargs)
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        param = params.get(key)
        if param is None:
            allowed = ", ".join(sorted(k.replace("_", "-") for k in params))
            raise UsageError(f"unknown config key {raw_key!r}; allowed keys: {allowed}")
        source = ctx.get_parameter_source(key)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        _check_value(raw_key, param, value)
        if value is None:
            continue
        try:
            if (param.multiple or param.nargs != 1) and isinstance(value, str):
                value = [value]
            merged[key] = param.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise UsageError(
                f"config key {raw_key!r}: {value!r} is not valid: {exc.message}; "
                f"expected {_describe_allowed(param)}"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"config key {raw_key!r}: {value!r} is not valid; "
                f"expected {_describe_allowed(param)}"
            ) from exc
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command callback (below ``@click.command``) with the config mechanism."""

    @click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML file with the same options as the flags; flags override it.",
    )
    @click.option(
        "--print-config",
        is_flag=True,
        default=False,
        help="Print the effective configuration as YAML and exit.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, config: str | None, print_config: bool, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        command = ctx.command
        if config:
            kwargs = merge_config(ctx, command, load_config(config), kwargs)
        if print_config:
            import yaml

            effective = {
                k.replace("_", "-"): _plain(v)
                for k, v in kwargs.items()
                if k in _option_params(command)
            }
            click.echo(yaml.safe_dump(effective, sort_keys=False), nl=False)
            ctx.exit(0)
        return func(*args, **kwargs)

    return wrapper
