"""Each job's options are declared once (``transferkit.options``): the command line's flags, the
Python API's keyword arguments and the job's values all come from the same fields."""

from __future__ import annotations

import dataclasses
import inspect

import click
import pytest

import transferkit
from transferkit import api, options
from transferkit.cli import build_cli
from transferkit.errors import TransferkitError, UsageError

JOBS = {
    "extract": (options.ExtractOptions, api.extract),
    "train": (options.TrainOptions, api.train),
    "stream": (options.StreamOptions, api.stream),
    "predict": (options.PredictOptions, api.predict),
    "finetune": (options.FinetuneOptions, api.finetune),
    "spotcheck": (options.SpotcheckOptions, api.spotcheck),
    "demo": (options.DemoOptions, api.demo),
    "export": (options.ExportOptions, api.export),
    "serve": (options.ServeOptions, api.serve),
}


@pytest.fixture(scope="module")
def cli() -> click.Group:
    return build_cli()


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_field_is_one_flag_of_its_command_with_its_default_and_help(cli, command):
    cls, _ = JOBS[command]
    params = {p.name: p for p in cli.commands[command].params}
    for f in dataclasses.fields(cls):
        if not f.metadata["cli"]:
            assert f.name not in params
            continue
        param = params[f.name]
        assert param.help == f.metadata["help"]
        default = () if param.multiple else f.default
        assert param.default == default, f.name


@pytest.mark.parametrize("command", sorted(JOBS))
def test_every_field_is_a_typed_keyword_of_the_api_function(command):
    cls, function = JOBS[command]
    signature = inspect.signature(function)
    types = cls.types()
    for f in dataclasses.fields(cls):
        param = signature.parameters[f.name]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY
        assert param.default == f.default
        assert param.annotation == types[f.name]
        assert f"``{f.name}``" in function.__doc__
    assert function is getattr(transferkit, command)


def test_values_are_checked_and_normalised_once_at_the_edge():
    made = options.ExtractOptions(
        input_size="96x64", weights="none", pooling="MAX", precision="fp32", compression="none"
    )
    assert made.input_size == (96, 64)
    assert made.weights is None
    assert made.pooling == "max"
    assert made.precision == "32"
    assert made.compression is None
    assert made.mode == "create"
    recipe = made.recipe("efficientnet-lite0")
    assert (recipe.input_size, recipe.weights, recipe.pooling) == ((96, 64), None, "max")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 0}, "batch size must be positive"),
        ({"resume": True, "overwrite": True}, "exclude each other"),
        ({"jobs": 2}, "go with --scheduler"),
        ({"scheduler": "local", "buffer_rows": 10}, "--buffer-rows is for one process"),
        ({"input_size": "96x"}, "not understood"),
        ({"pooling": "median"}, "unknown pooling"),
        ({"weights": "/no/such/weights.h5"}, "does not exist"),
    ],
)
def test_a_bad_value_is_refused_when_the_options_are_made(values, message):
    with pytest.raises(TransferkitError, match=message):  # usage errors, a missing file
        options.ExtractOptions(**values)


def test_an_unknown_keyword_names_the_closest_option():
    with pytest.raises(UsageError, match=r"unknown option 'batchsize' \(did you mean 'batch_size'"):
        options.ExtractOptions.of(values={"batchsize": 8})
    with pytest.raises(UsageError, match="unknown option 'batchsize'"):
        transferkit.extract("images", backbone="b", out="o.h5", batchsize=8)


def test_options_object_and_keywords_combine():
    base = options.TrainOptions(seed=3)
    made = options.TrainOptions.of(base, {"test_size": 0.5})
    assert (made.seed, made.test_size) == (3, 0.5)
    with pytest.raises(UsageError, match="must be a TrainOptions"):
        options.TrainOptions.of(options.StreamOptions(), {})  # type: ignore[arg-type]


def test_the_command_line_hands_the_job_one_parsed_options_value(cli, monkeypatch, tmp_path):
    seen = {}

    def fake_extract(images, *, backbone, out, options=None, **values):
        seen.update(images=images, backbone=backbone, out=out, options=options, values=values)
        return {}

    monkeypatch.setattr(api, "extract", fake_extract)
    from click.testing import CliRunner

    args = ["extract", str(tmp_path), "-b", "tiny", "-o", "f.h5", "--input-size", "48x32"]
    args += ["--weights", "none", "--compression", "none", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    made = seen["options"]
    assert isinstance(made, options.ExtractOptions)
    assert seen["values"] == {}
    assert (made.input_size, made.weights, made.compression) == ((48, 32), None, None)


def test_an_unknown_keyword_is_also_the_type_error_python_raises():
    with pytest.raises(TypeError, match="unknown option 'sed'"):
        transferkit.train("store.h5", classifier="knn-3", sed=1)
    with pytest.raises(TypeError, match="extract_many takes no 'scheduler'"):
        transferkit.extract_many("images", backbone="b", outs={"avg": "a.h5"}, scheduler="local")


def test_per_phase_values_take_numpy_numbers_and_refuse_fractions_of_an_epoch():
    import numpy as np

    made = options.FinetuneOptions(epochs=[np.int64(2), 3.0], learning_rate=np.float32(0.5))
    assert made.epochs == (2, 3) and made.learning_rate == 0.5
    assert options.FinetuneOptions(epochs=[]).epochs is None
    with pytest.raises(UsageError, match="whole numbers"):
        options.FinetuneOptions(epochs=2.5)


def test_jobs_zero_is_every_core_where_it_always_was():
    assert options.SpotcheckOptions(jobs=0).jobs == 0  # the grid then runs on every core
    for cls in (options.SpotcheckOptions, options.DemoOptions, options.ExtractOptions):
        with pytest.raises(UsageError, match="--jobs must be at least 1"):
            cls(jobs=-1, **({"scheduler": "local"} if cls is options.ExtractOptions else {}))
