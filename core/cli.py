"""The ``transferkit`` command line: thin click commands over :mod:`transferkit.api`.

Exit codes: 0 success, 1 a failed job, 2 a usage error. Human output goes to stdout, JSON with
``--json``, diagnostics to stderr. Plugins add commands through the ``register_commands`` hook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from . import logs, plugin_manager, registry
from .config import ConfigCommand
from .errors import TransferkitError, UsageError
from .version import __version__

VERBOSE_ENV = "TRANSFERKIT_VERBOSE"


class TransferkitGroup(click.Group):
    """A click group that turns transferkit errors into clean messages and exit codes.

    Its commands are ConfigCommand instances, so ``--config`` can supply
    their required options and arguments.
    """

    command_class = ConfigCommand

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx=None) from exc
        except TransferkitError as exc:
            raise click.ClickException(str(exc)) from exc
        except (OSError, RuntimeError) as exc:
            # the last resort for an operating-system error no job turned into a message (a
            # full disk, a read-only file system): one line, never a traceback
            from .outputs import os_error_details

            details = os_error_details(exc)
            if details is None:
                raise
            reason = " ".join(details[1].split())
            where = getattr(exc, "filename", None)
            raise click.ClickException(f"{where}: {reason}" if where else reason) from exc
        except KeyboardInterrupt:
            # the job has said what it kept; the shell's convention for Ctrl-C is 128 + SIGINT
            click.echo("transferkit: interrupted", err=True)
            raise click.exceptions.Exit(130) from None


def _set_verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[VERBOSE_ENV] = "1"
    logs.install(verbose=verbose())


@click.group(cls=TransferkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="transferkit")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    expose_value=False,
    callback=_set_verbose,
    help="Show debug messages, TensorFlow's start-up lines and pip's output (also accepted "
    "after the command).",
)
def cli() -> None:
    """transferkit: transfer learning on images with Keras 3, everything pluggable.

    Extract features from a folder of images with a pretrained backbone into an HDF5 or Zarr
    store, train and spot-check classifiers on them, learn incrementally from large stores,
    fine-tune backbones, and predict on new images.

    \b
    Example:
      transferkit demo
      transferkit backbones
    """


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit(result: Any, as_json: bool, show: Callable[[Any], None]) -> None:
    """A command's result: as JSON with ``--json``, else as ``show`` prints it for a person."""
    if as_json:
        echo_json(result)
    else:
        show(result)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as an aligned text table with the given columns."""
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- plugins


@cli.command("plugins")
@click.option("--all", "include_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_command(include_all: bool, as_json: bool) -> None:
    """List installed plugins: name, version, hooks they implement, and failures.

    \b
    Example:
      transferkit plugins --all --json
    """
    dists = _distributions()
    rows = [
        {**r, "distribution": dists.get(r["name"], "transferkit" if r["builtin"] else "")}
        for r in plugin_manager.list_plugins(include_builtin=include_all)
    ]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("No third-party plugins installed (use --all to include the built-ins).")
        return
    table = [
        {
            **r,
            "hooks": ", ".join(r["hooks"]) if r["status"] == "loaded" else r.get("error", ""),
        }
        for r in rows
    ]
    print_table(table, ["name", "distribution", "version", "status", "hooks"])


def _distributions() -> dict[str, str]:
    """Plugin (entry point) name -> the distribution (pip) name that provides it."""
    found: dict[str, str] = {}
    for ep in plugin_manager.selected_entry_points():
        if ep.dist is not None:
            found[ep.name] = ep.dist.name
    return found


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def _pip(action: str, packages: Iterable[str]) -> None:
    command = [sys.executable, "-m", "pip", action, *(["-y"] if action == "uninstall" else [])]
    command += list(packages)
    click.echo("$ " + " ".join(command), err=True)
    output = ""
    if verbose():
        returncode = subprocess.run(command, check=False).returncode
    else:  # pip's own lines only with -v, or when it fails
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        returncode, output = result.returncode, (result.stdout or "") + (result.stderr or "")
    if returncode != 0:
        if output:
            click.echo(output.rstrip()[-4000:], err=True)
        raise TransferkitError(f"pip {action} failed with exit code {returncode}")


def _registered_by_plugin() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind in registry.HOOKS:
        for spec in registry.all_specs(kind).values():
            found.setdefault(spec.plugin, []).append(f"{kind} {spec.name}")
    return found


@cli.command("install", context_settings={"ignore_unknown_options": True})
@click.argument("packages", nargs=-1, required=True)
def install_command(packages: tuple[str, ...]) -> None:
    """Install plugin packages with pip into this Python, then show what they registered.

    Arguments are passed to `pip install` as they are; pip's output is shown with -v (or when
    it fails).

    \b
    Example:
      transferkit install -e ./my-plugin
    """
    before = {r["name"] for r in plugin_manager.list_plugins()}
    _pip("install", packages)
    plugin_manager.reset()
    rows = [r for r in plugin_manager.list_plugins() if r["name"] not in before]
    registered = _registered_by_plugin()
    if not rows:
        click.echo("No new transferkit plugin was found in what was installed.")
    for row in rows:
        if row["status"] == "failed":
            click.echo(f"{row['name']}: failed to load: {row['error']}")
            continue
        items = registered.get(row["name"], [])
        click.echo(f"{row['name']} {row['version']}: " + (", ".join(items) or "no items"))


@cli.command("uninstall")
@click.argument("packages", nargs=-1, required=True)
def uninstall_command(packages: tuple[str, ...]) -> None:
    """Uninstall plugin packages with pip (no confirmation prompt).

    PACKAGES are distribution (pip) names or the plugin names `transferkit plugins` shows. Fails
    (exit 1) when nothing was uninstalled.

    \b
    Example:
      transferkit uninstall my-plugin
    """
    import importlib.metadata

    dists = _distributions()
    names = [dists.get(p, p) for p in packages]
    for given, name in zip(packages, names, strict=True):
        if name != given:
            click.echo(f"{given}: the plugin of distribution {name}", err=True)

    def installed() -> set[str]:
        return {
            (d.metadata["Name"] or "").lower().replace("_", "-")
            for d in importlib.metadata.distributions()
        }

    before = installed()
    _pip("uninstall", names)
    removed = sorted(before - installed())
    plugin_manager.reset()
    if not removed:
        raise TransferkitError(
            f"nothing was uninstalled: {', '.join(packages)} is not installed "
            "(`transferkit plugins` shows the plugins and their distributions)"
        )
    click.echo("Uninstalled: " + ", ".join(removed))
    click.echo(
        "Plugins now installed: "
        + (", ".join(r["name"] for r in plugin_manager.list_plugins()) or "none")
    )


# --------------------------------------------------------------------------- listings

LISTINGS: dict[str, tuple[str, list[str], str]] = {
    "backbones": (
        "backbone",
        ["name", "input_size", "feature_dims", "param_count", "offline", "weights", "plugin"],
        "Backbones",
    ),
    "classifiers": (
        "classifier",
        ["name", "incremental", "groups", "plugin", "description"],
        "Classifiers",
    ),
    "stores": ("store", ["name", "suffixes", "plugin", "description"], "Feature stores"),
    "strategies": ("strategy", ["name", "plugin", "description"], "Fine-tune strategies"),
    "datasets": (
        "dataset",
        ["name", "transform", "plugin", "description"],
        "Image sources and tasks",
    ),
    "heads": ("head", ["name", "plugin", "description"], "Classification heads"),
    "loggers": ("logger", ["name", "plugin", "description"], "Loggers of fine-tune runs"),
    "runtimes": (
        "runtime",
        ["name", "available", "reason", "precisions", "bf16", "auto_order", "plugin"],
        "Inference runtimes",
    ),
}


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return (
            ",".join(str(v) for v in value)
            if value and not isinstance(value[0], int)
            else "x".join(str(v) for v in value)
        )
    return str(value)


def _natural_key(spec: Any) -> list[Any]:
    """Sort ``knn-3`` before ``knn-10``."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", spec.name)]


def _offline(row: dict[str, Any]) -> str:
    """Whether a backbone's default weights need no download: ``yes`` (they ship with an installed
    package), ``cached`` (already in the Keras cache), ``download``, or ``-`` (a family); a spec
    whose ``metadata["offline"]`` is a word says it itself (keras-hub presets: ``cached``)."""
    import re

    weights = str(row.get("weights", ""))
    if row["name"].endswith(":"):
        return "-"
    offline = row.get("metadata", {}).get("offline")
    if isinstance(offline, str) and offline:  # the plugin knows (e.g. "cached", "download")
        return offline
    if "offline" in weights.lower() or offline:
        return "yes"
    if "keras cache" in weights.lower():
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            files = os.listdir(os.path.join(home, "models"))
        except OSError:
            files = []
        stem = re.sub(r"[^a-z0-9]", "", row["name"].lower())
        for f in files:
            flat = re.sub(r"[^a-z0-9]", "", f.lower())
            if flat.startswith((stem + "weights", stem + "notop")):
                return "cached"
    return "download"


def _make_listing(command_name: str, kind: str, columns: list[str], title: str) -> None:
    @cli.command(command_name)
    @click.argument("pattern", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def listing(pattern: str | None, as_json: bool) -> None:
        import fnmatch

        specs = registry.all_specs(kind)
        rows = [spec.describe() for spec in sorted(specs.values(), key=_natural_key)]
        if pattern:  # a shell-style name filter; a plain word matches names containing it
            glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
            rows = [r for r in rows if fnmatch.fnmatchcase(r["name"], glob)]
        if kind == "backbone":
            rows = [{**r, "offline": _offline(r)} for r in rows]
        if as_json:
            echo_json(rows)
            return
        click.echo(f"{title}: {len(rows)}")
        flat = [{**r.get("metadata", {}), **r} for r in rows]
        print_table(
            [{c: _short(r.get(c, "")) if r.get(c) is not None else "-" for c in columns}
             for r in flat],
            columns,
        )  # fmt: skip

    offline = (
        " OFFLINE says whether the default weights need no download (yes: they ship with a "
        "package; cached: already in the Keras or keras-hub cache)."
        if kind == "backbone"
        else " AUTO_ORDER is the place in the order --runtime auto tries (lowest first; "
        "- : never picked by auto; see docs/runtimes.md)."
        if kind == "runtime"
        else ""
    )
    listing.__doc__ = (
        f"List the registered {title.lower()}, with their metadata and providing plugin.\n\n"
        f"PATTERN filters the names (shell-style, e.g. 'efficientnet*').{offline}\n\n"
        f"\b\nExample:\n  transferkit {command_name} --json\n"
        f"  transferkit {command_name} '{'efficientnet*' if kind == 'backbone' else 'k*'}'"
    )
    listing.help = listing.__doc__


for _name, (_kind, _columns, _title) in LISTINGS.items():
    _make_listing(_name, _kind, _columns, _title)


# --------------------------------------------------------------------------- entry point

_commands_registered = False


def build_cli() -> click.Group:
    """The root group with the job commands and those of every loaded plugin added (once)."""
    global _commands_registered
    if not _commands_registered:
        _commands_registered = True
        import importlib

        from .commands import COMMAND_MODULES

        for module_name in COMMAND_MODULES:
            importlib.import_module(module_name).register(cli)
        plugin_manager.call_lifecycle("register_commands", cli=cli)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    args = list(argv) if argv is not None else sys.argv[1:]
    # -v / --verbose anywhere before `--` (so also after the command's name)
    end = args.index("--") if "--" in args else len(args)
    is_verbose = any(a in ("-v", "--verbose") for a in args[:end])
    logs.install(verbose=is_verbose or verbose())
    if is_verbose:
        os.environ[VERBOSE_ENV] = "1"
        args = [a for i, a in enumerate(args) if i >= end or a not in ("-v", "--verbose")]
    elif "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        # TensorFlow's start-up notices (oneDNN, CPU features, absl's pre-init lines, CUDA
        # probes) would bury the command's own output; -v or TF_CPP_MIN_LOG_LEVEL shows them.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if argv is None:  # the real command line (not a test calling main in-process)
            from .quiet import filter_native_stderr

            filter_native_stderr()
    try:
        group = build_cli()  # loads the plugins
    except KeyboardInterrupt:
        click.echo("transferkit: interrupted while loading plugins", err=True)
        sys.exit(130)
    group.main(args=args, prog_name="transferkit")
