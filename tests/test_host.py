"""The plugin host: loading, isolation of failures, duplicate names, listings, exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
import types
from typing import Any

import pytest
from cli_faults import python_output
from click.testing import CliRunner

from transferkit import BackboneSpec, ClassifierSpec, hookimpl, plugin_manager, registry
from transferkit.cli import build_cli
from transferkit.errors import UsageError


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


class TinyPlugin:
    """A plugin object registering one backbone and one classifier."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register(
            BackboneSpec(
                name="tiny-test",
                description="a test backbone",
                factory=lambda **kw: None,
                input_size=(32, 32),
                feature_dims={"avg": 8, "max": 8, "flatten": 128},
                weights="random",
            )
        )

    @hookimpl
    def register_classifiers(self, register: Any) -> None:
        register(ClassifierSpec(name="tiny-clf", description="test", factory=dict))


def test_builtins_are_listed_with_hooks() -> None:
    rows = plugin_manager.list_plugins(include_builtin=True)
    names = {r["name"] for r in rows}
    assert set(plugin_manager.DEFAULT_PLUGINS) <= names
    for row in rows:
        assert row["status"] == "loaded", row
        assert row["builtin"] is True
        assert row["hooks"], row
    # without --all, built-ins are hidden
    assert plugin_manager.list_plugins() == []


def test_plugins_json_shape() -> None:
    result = run_cli("plugins", "--all", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert isinstance(data, list) and data
    for row in data:
        assert set(row) >= {"name", "version", "hooks", "builtin", "status"}
        assert isinstance(row["hooks"], list)


def test_registered_plugin_items_are_listed(register_plugin: Any) -> None:
    register_plugin(TinyPlugin(), "tiny")
    spec = registry.backbone("tiny-test")
    assert spec.plugin == "tiny"
    result = run_cli("backbones", "--json")
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["tiny-test"]["plugin"] == "tiny"
    assert rows["tiny-test"]["feature_dims"] == {"avg": 8, "max": 8, "flatten": 128}
    assert rows["tiny-test"]["input_size"] == [32, 32]
    table = run_cli("classifiers").stdout
    assert "tiny-clf" in table


def test_duplicate_names_name_both_plugins(register_plugin: Any) -> None:
    register_plugin(TinyPlugin(), "first-plugin")
    register_plugin(TinyPlugin(), "second-plugin")
    with pytest.raises(registry.DuplicateNameError) as info:
        registry.all_specs("backbone")
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_unknown_name_suggests(register_plugin: Any) -> None:
    register_plugin(TinyPlugin(), "tiny")
    with pytest.raises(UsageError, match="Did you mean 'tiny-test'"):
        registry.backbone("tiny-tset")


def test_invalid_spec_is_refused(register_plugin: Any) -> None:
    class Bad:
        @hookimpl
        def register_backbones(self, register: Any) -> None:
            register(BackboneSpec(name="has space", description="", factory=print))

    register_plugin(Bad(), "bad")
    monkey_strict = pytest.MonkeyPatch()
    monkey_strict.setenv("TRANSFERKIT_STRICT_PLUGINS", "1")
    try:
        with pytest.raises(ValueError, match="must not contain spaces"):
            registry.all_specs("backbone")
    finally:
        monkey_strict.undo()


class FakeEntryPoint:
    def __init__(self, name: str, load: Any) -> None:
        self.name = name
        self._load = load
        self.dist = None

    def load(self) -> Any:
        return self._load()


def _install_fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[FakeEntryPoint]) -> None:
    def entry_points(group: str | None = None, **kw: Any) -> list[Any]:
        return list(eps) if group == "transferkit" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv("TRANSFERKIT_LOAD_PLUGINS")
    plugin_manager.reset()


def _raise_on_import() -> Any:
    raise ImportError("this plugin is broken on purpose")


def _good_plugin() -> Any:
    return TinyPlugin()


def _plugin_with_unknown_hook() -> Any:
    module = types.ModuleType("misspelled")

    @hookimpl
    def register_backbone(register: Any) -> None:  # missing "s": not a hook
        pass

    module.register_backbone = register_backbone  # type: ignore[attr-defined]
    return module


def test_broken_plugin_never_stops_the_cli(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the report is a warning record (the command line prints it on stderr: tests/test_faults.py);
    # read it wherever an earlier test left the command line's handler
    monkeypatch.setattr(logging.getLogger("transferkit"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="transferkit")
    _install_fake_entry_points(
        monkeypatch,
        [
            FakeEntryPoint("broken", _raise_on_import),
            FakeEntryPoint("misspelled", _plugin_with_unknown_hook),
            FakeEntryPoint("good", _good_plugin),
        ],
    )
    rows = {r["name"]: r for r in plugin_manager.list_plugins()}
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert 'error loading plugin "broken"' in err and "broken on purpose" in err
    assert 'error loading plugin "misspelled"' in err and "register_backbone" in err
    assert rows["broken"]["status"] == "failed"
    assert "broken on purpose" in rows["broken"]["error"]
    assert rows["misspelled"]["status"] == "failed"
    assert rows["good"]["status"] == "loaded"
    assert registry.backbone("tiny-test").plugin == "good"
    result = CliRunner().invoke(build_cli(), ["plugins", "--json"])
    assert result.exit_code == 0
    assert {r["name"] for r in json.loads(result.stdout)} == {"broken", "misspelled", "good"}


def test_strict_mode_reraises(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_entry_points(monkeypatch, [FakeEntryPoint("broken", _raise_on_import)])
    monkeypatch.setenv("TRANSFERKIT_STRICT_PLUGINS", "1")
    with pytest.raises(ImportError, match="broken on purpose"):
        plugin_manager.get_plugin_manager()


def test_load_plugins_env_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [FakeEntryPoint("good", _good_plugin), FakeEntryPoint("broken", _raise_on_import)]
    _install_fake_entry_points(monkeypatch, eps)
    monkeypatch.setenv("TRANSFERKIT_LOAD_PLUGINS", "good")
    plugin_manager.reset()
    assert [r["name"] for r in plugin_manager.list_plugins()] == ["good"]
    monkeypatch.setenv("TRANSFERKIT_LOAD_PLUGINS", "")
    plugin_manager.reset()
    assert plugin_manager.list_plugins() == []


def test_loading_is_idempotent() -> None:
    assert plugin_manager.get_plugin_manager() is plugin_manager.get_plugin_manager()


def test_exception_hook_and_lifecycle_errors_are_contained(register_plugin: Any) -> None:
    seen: list[tuple[str, str]] = []

    class Listener:
        @hookimpl
        def on_exception(self, exception: BaseException, where: str) -> None:
            seen.append((where, str(exception)))

        @hookimpl
        def on_extract_batch(self, rows_written: int) -> None:
            raise RuntimeError("listener bug")

    register_plugin(Listener(), "listener")
    plugin_manager.notify_exception(ValueError("boom"), "extract", output="x.h5")
    assert seen == [("extract", "boom")]
    # a failing lifecycle listener is reported, never stops the job
    plugin_manager.call_lifecycle(
        "on_extract_batch", rows_written=1, total=2, batch_size=1, skipped=0
    )


def test_usage_errors_exit_2_and_job_errors_exit_1(register_plugin: Any) -> None:
    import click

    from transferkit.errors import TransferkitError

    class Commands:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            @cli.command("fail-job")
            def fail_job() -> None:
                raise TransferkitError("the job failed")

            @cli.command("fail-usage")
            def fail_usage() -> None:
                raise UsageError("bad option")

    from transferkit.cli import TransferkitGroup

    register_plugin(Commands(), "commands")
    # a copy of the root group, so the test's commands do not leak into other tests
    group = TransferkitGroup(name="transferkit", commands=dict(build_cli().commands))
    plugin_manager.get_plugin_manager().hook.register_commands(cli=group)
    assert {"fail-job", "fail-usage"} <= set(group.commands)
    runner = CliRunner()
    job = runner.invoke(group, ["fail-job"])
    usage = runner.invoke(group, ["fail-usage"])
    assert job.exit_code == 1 and "the job failed" in job.stderr
    assert usage.exit_code == 2 and "bad option" in usage.stderr
    assert runner.invoke(group, ["no-such-command"]).exit_code == 2


@pytest.mark.process
def test_help_and_listing_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "from transferkit.cli import main\n"
        "for args in (['--help'], ['plugins', '--all'], ['backbones'], ['classifiers'],\n"
        "             ['runtimes']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = python_output(code)
    assert out.strip().endswith("TF False False"), out[-500:]


def test_every_command_has_help_with_an_example() -> None:
    group = build_cli()
    runner = CliRunner()
    assert runner.invoke(group, ["--version"]).exit_code == 0
    for name in group.list_commands(None):  # type: ignore[arg-type]
        result = runner.invoke(group, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, f"`transferkit {name} --help` shows no example"


@pytest.mark.process
def test_python_dash_m_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transferkit", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "transferkit" in result.stdout


def test_api_functions_stay_functions_after_their_jobs_are_imported() -> None:
    import importlib

    import transferkit

    for name in ("extract", "train", "spotcheck", "stream", "predict", "finetune", "demo"):
        importlib.import_module(f"transferkit.jobs.{name}")
        assert callable(getattr(transferkit, name)), name
        assert getattr(transferkit, name).__module__ == "transferkit.api", name


@pytest.mark.process
def test_no_top_level_core_or_plugins_module_is_installed(tmp_path: Any) -> None:
    code = (
        "import importlib.util, transferkit, transferkit.plugins\n"
        "print(importlib.util.find_spec('core'), importlib.util.find_spec('plugins'))\n"
    )
    out = python_output(code, cwd=tmp_path)
    assert out.strip() == "None None"


@pytest.mark.process
def test_refused_outputs_and_bad_options_fail_before_tensorflow_loads(tmp_path: Any) -> None:
    """What the user can get wrong on the command line is refused in well under a second: the
    check runs before the job imports TensorFlow (a fresh process, then its ``sys.modules``)."""
    photos = tmp_path / "photos"
    for name in ("cat", "dog"):
        (photos / name).mkdir(parents=True)
        (photos / name / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 never decoded")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a folder of the user's")
    backbone = ["-b", "efficientnet-lite0", "--input-size", "32"]
    cases = [
        (["extract", photos, *backbone, "-o", photos / "cat" / "f.zarr"], "lies inside the input"),
        (["extract", photos, *backbone, "-o", mine, "--store", "zarr", "--overwrite"],
         "not a zarr store written by transferkit"),
        (["extract", photos, "-b", "efficientnet-lite0", "--input-size", "96x", "-o",
          tmp_path / "f.h5"], "not understood"),
        (["extract", photos, *backbone, "-o", tmp_path / "f.h5", "--pooling", "median"],
         "median"),
        (["extract", photos, *backbone, "-o", tmp_path / "f.h5", "--no-such-option"],
         "No such option"),
        (["finetune", photos, *backbone, "-o", mine], "transferkit did not make"),
        (["spotcheck", photos, "-b", "efficientnet-lite0@32", "--cache-dir",
          photos / "cache"], "lies inside the input"),
        (["demo", "--out", mine], "transferkit did not make"),
        (["predict", tmp_path / "missing.skops", photos / "cat" / "0.jpg"], "missing.skops"),
    ]  # fmt: skip
    code = (
        "import contextlib, io, json, sys\n"
        "from transferkit.cli import main\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            main(args)\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    print(json.dumps([code, err.getvalue()]))\n"
        "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    argv = json.dumps([[str(a) for a in args] for args, _ in cases])
    out = subprocess.run(
        [sys.executable, "-c", code, argv], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[-1] == "TF False False", out
    assert len(out) == len(cases) + 1, out
    for (args, needle), line in zip(cases, out, strict=False):
        exit_code, stderr = json.loads(line)
        assert exit_code == 2, (args, exit_code, stderr)
        assert needle in stderr and "Traceback" not in stderr, (args, stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "photos"]  # nothing written
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
