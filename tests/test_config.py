"""``--config FILE.yaml`` and ``--print-config``: the file holds the flags, flags override it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from transferkit.cli import TransferkitGroup
from transferkit.config import config_options

seen: dict[str, Any] = {}


def make_group() -> click.Group:
    group = TransferkitGroup(name="transferkit")

    @group.command("job")
    @click.argument("images")
    @click.option("--batch-size", type=int, default=32)
    @click.option("--pooling", type=click.Choice(["avg", "max", "flatten"]), default="avg")
    @click.option("--resume/--no-resume", default=False)
    @click.option("--backbones", multiple=True)
    @config_options
    def job(images: str, **options: Any) -> None:
        """A test job.

        \b
        Example:
          transferkit job imgs --config job.yaml
        """
        seen.clear()
        seen.update(images=images, **options)

    return group


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(make_group(), ["job", *args])


def test_file_values_are_used_and_flags_override(tmp_path: Path) -> None:
    config = write(
        tmp_path, {"batch-size": 8, "pooling": "max", "resume": True, "backbones": ["a", "b"]}
    )
    result = invoke("imgs", "--config", config)
    assert result.exit_code == 0, result.output
    assert seen == {
        "images": "imgs",
        "batch_size": 8,
        "pooling": "max",
        "resume": True,
        "backbones": ("a", "b"),
    }
    result = invoke("imgs", "--config", config, "--batch-size", "64", "--no-resume")
    assert result.exit_code == 0
    assert seen["batch_size"] == 64 and seen["resume"] is False and seen["pooling"] == "max"


def test_underscore_keys_and_single_value_for_a_list(tmp_path: Path) -> None:
    result = invoke("imgs", "--config", write(tmp_path, {"batch_size": 4, "backbones": "x"}))
    assert result.exit_code == 0, result.output
    assert seen["batch_size"] == 4 and seen["backbones"] == ("x",)


def test_unknown_key_names_the_allowed_keys(tmp_path: Path) -> None:
    result = invoke("imgs", "--config", write(tmp_path, {"batch-sise": 4}))
    assert result.exit_code == 2
    assert "unknown config key 'batch-sise' (did you mean 'batch-size'?)" in result.stderr
    assert "batch-size" in result.stderr and "pooling" in result.stderr


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"pooling": "mean"}, "one of ['avg', 'max', 'flatten']"),
        ({"batch-size": "many"}, "integer"),
    ],
)
def test_ill_typed_value_names_key_and_allowed(tmp_path: Path, data: Any, expected: str) -> None:
    result = invoke("imgs", "--config", write(tmp_path, data))
    assert result.exit_code == 2
    key = next(iter(data))
    assert f"config key '{key}'" in result.stderr and expected in result.stderr


def test_print_config_shows_the_effective_configuration(tmp_path: Path) -> None:
    config = write(tmp_path, {"batch-size": 8})
    result = invoke("imgs", "--config", config, "--pooling", "flatten", "--print-config")
    assert result.exit_code == 0
    printed = yaml.safe_load(result.stdout)
    assert printed == {
        "images": "imgs",
        "batch-size": 8,
        "pooling": "flatten",
        "resume": False,
        "backbones": [],
    }
    # the printed configuration is itself a valid config file, positional argument included
    (tmp_path / "printed.yaml").write_text(result.stdout)
    assert invoke("--config", str(tmp_path / "printed.yaml")).exit_code == 0
    assert seen["pooling"] == "flatten" and seen["batch_size"] == 8


def test_bad_files(tmp_path: Path) -> None:
    missing = invoke("imgs", "--config", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "cannot read config file" in missing.stderr
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    listed = invoke("imgs", "--config", str(tmp_path / "list.yaml"))
    assert listed.exit_code == 2 and "must hold a mapping" in listed.stderr
    (tmp_path / "bad.yaml").write_text("a: [\n")
    bad = invoke("imgs", "--config", str(tmp_path / "bad.yaml"))
    assert bad.exit_code == 2 and "not valid YAML" in bad.stderr


def test_inverted_flag_names_and_the_argument_from_the_file(tmp_path: Path) -> None:
    result = invoke("--config", write(tmp_path, {"images": "from-file", "no-resume": False}))
    assert result.exit_code == 0, result.output
    assert seen["images"] == "from-file" and seen["resume"] is True
    # the command line still wins over the file
    assert invoke("cli", "--config", write(tmp_path, {"images": "from-file"})).exit_code == 0
    assert seen["images"] == "cli"


# --------------------------------------------------------------------------- the real commands


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.h5"
    path.write_bytes(b"")  # --print-config exits before anything reads it
    return path


def run_command_lines(tmp_path: Path, store: Path) -> dict[str, list[str]]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    return {
        "extract": ["extract", str(images), "-b", "efficientnet-lite0", "-o", str(tmp_path / "f"),
                    "--input-size", "48", "--no-progress", "--json"],
        "train": ["train", str(store), "-c", "ridge-1", "--seed", "3"],
        "spotcheck": ["spotcheck", str(store), str(store), "-c", "linear", "--timeout", "9"],
        "stream": ["stream", str(store), "-c", "sgd", "--batch-size", "64"],
        "predict": ["predict", str(tmp_path / "m.skops"), str(images), "--top", "2"],
        "demo": ["demo", "--out", str(tmp_path / "demo"), "-j", "1"],
        "finetune": ["finetune", str(images), "-b", "efficientnet-lite0", "-o", str(tmp_path / "r"),
                     "--epochs", "2", "--epochs", "3", "--lr", "0.001", "--input-size", "64"],
    }  # fmt: skip


@pytest.mark.parametrize(
    "command", ["extract", "train", "spotcheck", "stream", "predict", "demo", "finetune"]
)
def test_print_config_fed_back_alone_reproduces_the_configuration(
    command: str, tmp_path: Path, store: Path
) -> None:
    from transferkit.cli import build_cli

    cli = build_cli()
    runner = CliRunner()
    first = runner.invoke(cli, [*run_command_lines(tmp_path, store)[command], "--print-config"])
    assert first.exit_code == 0, first.output
    printed = yaml.safe_load(first.stdout)
    config = tmp_path / f"{command}.yaml"
    config.write_text(first.stdout)
    again = runner.invoke(cli, [command, "--config", str(config), "--print-config"])
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout) == printed
    # positional arguments and required options are in the file, under the names users type
    assert not any(k.startswith(("as-", "no-")) or "_" in k for k in printed)
    expected = {
        "extract": {"images", "backbone", "out", "json", "progress"},
        "train": {"store-path", "classifier", "json"},
        "spotcheck": {"inputs", "classifiers"},
        "stream": {"store-path", "classifier"},
        "predict": {"model-path", "images"},
        "demo": {"out", "backbones"},
        "finetune": {"images", "backbone", "out", "epochs", "learning-rate"},
    }[command]
    assert expected <= set(printed)
    if command == "extract":
        assert printed["input-size"] == 48 and printed["progress"] is False
    if command == "finetune":
        assert printed["epochs"] == [2, 3] and printed["learning-rate"] == [0.001]


def test_required_option_from_the_file(tmp_path: Path, store: Path) -> None:
    from transferkit.cli import build_cli

    config = tmp_path / "train.yaml"
    config.write_text("classifier: ridge-1\ntest-size: 0.25\n")
    result = CliRunner().invoke(
        build_cli(), ["train", str(store), "--config", str(config), "--print-config"]
    )
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert printed["classifier"] == "ridge-1" and printed["test-size"] == 0.25
    missing = CliRunner().invoke(build_cli(), ["train", str(store)])
    assert missing.exit_code == 2 and "--classifier" in missing.stderr
