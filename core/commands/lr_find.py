"""``transferkit lr-find``: the learning-rate range test of a fine-tune's first phase."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import LrFindOptions
from .options import from_fields, require

# the fine-tune's options that shape the sweep's data, model and first phase
FINETUNE_FIELDS = (
    "strategy", "head", "learning_rate", "unfreeze_from", "augment", "label_smoothing",
    "batch_size", "input_size", "weights", "task", "split", "seed", "train_bn", "precision",
    "deterministic", "devices", "distribute", "accumulate_grad_batches", "gradient_clip_val",
    "limit_train_batches", "overwrite",
)  # fmt: skip
SWEEP_FIELDS = ("min_lr", "max_lr", "num_training", "early_stop_threshold")


def print_lr_find(result: dict[str, Any]) -> None:
    click.echo(
        f"lr-find, phase {result['phase']}: {len(result['losses'])} batches from "
        f"{result['learning_rates'][0]:.3g} to {result['learning_rates'][-1]:.3g}"
        f"{' (stopped: the loss diverged)' if result['diverged'] else ''}."
    )
    for key in ("steepest", "valley"):
        value = result.get(key)
        click.echo(f"  {key}: {value:.3g}" if value is not None else f"  {key}: none")
    click.echo(f"Suggested learning rate: {result['suggestion']:.3g}")
    click.echo(f"Plot: {result['plot']}")


def register(cli: click.Group) -> None:
    @cli.command("lr-find")
    @click.argument("images", type=click.Path(exists=True))
    @click.option(
        "--backbone", "-b", default=None, help="Backbone name (see `backbones`); required here "
        "or in --config."
    )  # fmt: skip
    @click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder.")
    @from_fields(LrFindOptions, only=SWEEP_FIELDS)
    @from_fields(LrFindOptions, only=FINETUNE_FIELDS)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @config_options
    def lr_find_command(
        images: str, backbone: str | None, out: str, as_json: bool, **values: Any
    ) -> None:
        """Find a learning rate: an exponential sweep over training batches.

        From the start state of a fine-tune (the same options as `finetune`), the learning
        rate of the strategy's first phase grows from --min-lr to --max-lr, one rate per
        batch, until the loss diverges. OUT gets lr_find.png (loss against rate) and
        lr_find.json (the curve and the suggestions: steepest descent and valley). `finetune
        --learning-rate auto` runs the same sweep and trains with the suggestion.

        \b
        Example:
          transferkit lr-find photos/ -b efficientnet-lite0 -s head-only -o run/
        """
        from .. import api
        from ..cli import emit

        require(backbone=backbone)
        result = api.lr_find(
            images, backbone=backbone, out=out, options=LrFindOptions.of(values=values)
        )
        emit(result, as_json, print_lr_find)
