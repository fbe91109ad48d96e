"""``transferkit finetune``: fine-tune a backbone with a head on a folder of images."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from .options import input_size_option


def print_finetune_summary(result: dict[str, Any]) -> None:
    data = result["data"]
    click.echo(
        f"Fine-tuned {result['backbone']} with the {result['head']} head "
        f"({result['strategy']}) on {data['train']} training images, {data['classes']} classes, "
        f"{result['epochs']} epochs in {result['seconds']:.1f} s."
    )
    for phase in result["phases"]:
        line = f"  phase {phase['phase']}: {phase['epochs']} epochs"
        if phase.get("early_stopped"):
            line += " (stopped early)"
        if "test_accuracy" in phase:
            line += f", test accuracy {phase['test_accuracy']:.4f}"
        click.echo(line)
    click.echo(f"Saved {result['model_path']} (use it with `transferkit predict`).")
    if result.get("curves"):
        click.echo(f"Curves: {result['curves']}")


def register(cli: click.Group) -> None:
    @cli.command("finetune")
    @click.argument("images", type=click.Path(exists=True))
    @click.option(
        "--backbone", "-b", default=None, help="Backbone name (see `backbones`); required here "
        "or in --config."
    )  # fmt: skip
    @click.option(
        "--strategy",
        "-s",
        default="warmup-unfreeze",
        show_default=True,
        help="Fine-tune strategy: warmup-unfreeze, head-only, full, gradual, or a plugin's.",
    )
    @click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder.")
    @click.option(
        "--head", default=None, help="Head: linear (default: pooling, dropout, dense), classic "
        "(with warmup-unfreeze also the classic recipe's RMSprop/SGD schedule), dense or a "
        "plugin's."
    )  # fmt: skip
    @click.option(
        "--epochs",
        type=int,
        multiple=True,
        help="Epochs, once or once per phase (warmup-unfreeze: --epochs 10 --epochs 10).",
    )
    @click.option(
        "--learning-rate", "--lr", "learning_rate", type=float, multiple=True,
        help="Learning rate, once or once per phase."
    )  # fmt: skip
    @click.option(
        "--unfreeze-from", type=int, default=None,
        help="First base layer trained in the unfrozen phase (default per backbone; VGG16: 15).",
    )  # fmt: skip
    @click.option(
        "--augment",
        type=click.Choice(["classic", "light", "flip", "none"]),
        default=None,
        help="Augmentation of training batches (classic: the classic generator's settings; "
        "light: flips and random crops; flip: flips); default flip with warmup-unfreeze and "
        "its linear head, else classic, none with --task rotation.",
    )
    @click.option(
        "--label-smoothing", type=float, default=None,
        help="Label smoothing of the loss (default warmup-unfreeze: 0.1; --head classic: 0).",
    )  # fmt: skip
    @click.option("--batch-size", type=int, default=32, show_default=True)
    @input_size_option
    @click.option(
        "--weights",
        default="default",
        show_default=True,
        help="default (pretrained), none (random), or a weights file.",
    )
    @click.option("--task", default=None, help="A task transform, e.g. rotation.")
    @click.option(
        "--split", type=float, nargs=3, default=(0.7, 0.15, 0.15), show_default=True,
        help="Train, validation and test fractions.",
    )  # fmt: skip
    @click.option(
        "--test", "test", type=click.Path(), default=None,
        help="Separate test images (same class sub-folders); IMAGES is then split into train "
        "and validation only (the test fraction goes to training).",
    )  # fmt: skip
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--patience", type=int, default=None,
        help="Early stopping patience in epochs (default warmup-unfreeze: 3, the best "
        "epoch's weights restored; --head classic: none).",
    )  # fmt: skip
    @click.option("--max-epochs", type=int, default=None, help="Cap on the epochs of all phases.")
    @click.option("--train-bn", is_flag=True, help="Train BatchNorm layers of the base too.")
    @click.option(
        "--precision",
        type=click.Choice(["32", "16-mixed", "bf16-mixed"]),
        default="32",
        show_default=True,
    )
    @click.option("--deterministic", is_flag=True, help="TensorFlow op determinism on.")
    @click.option(
        "--tensorboard",
        type=click.Path(file_okay=False),
        default=None,
        help="Write TensorBoard logs to this folder (`tensorboard --logdir DIR`).",
    )
    @click.option("--resume", is_flag=True, help="Continue from OUT's last checkpoint.")
    @click.option("--overwrite", is_flag=True, help="Start afresh even if OUT has a checkpoint.")
    @click.option(
        "--progress/--no-progress",
        default=True,
        show_default=True,
        help="Per-epoch lines on stderr.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @config_options
    def finetune_command(
        images: str,
        backbone: str | None,
        strategy: str,
        out: str,
        head: str | None,
        epochs: tuple[int, ...],
        learning_rate: tuple[float, ...],
        unfreeze_from: int | None,
        augment: str | None,
        label_smoothing: float | None,
        batch_size: int,
        input_size: str | None,
        weights: str,
        task: str | None,
        split: tuple[float, float, float],
        test: str | None,
        seed: int,
        patience: int | None,
        max_epochs: int | None,
        train_bn: bool,
        precision: str,
        deterministic: bool,
        tensorboard: str | None,
        resume: bool,
        overwrite: bool,
        progress: bool,
        as_json: bool,
    ) -> None:
        """Fine-tune a backbone with a classification head on a folder of images.

        IMAGES is a folder with one sub-folder per class or a CSV/JSON list of path,label. The
        images are split (stratified, seeded) into train/validation/test; the strategy decides
        what trains in each phase, and the test accuracy is printed after each phase. OUT gets
        model.keras (for `transferkit predict`), checkpoints/ (an interrupted run continues with
        --resume), history.csv/json, summary.json and curves.png (loss and accuracy per epoch).

        \b
        Example:
          transferkit finetune photos/ -o run/ --config examples/finetune-vgg16-classic.yaml
          transferkit finetune photos/ -b efficientnet-lite0 -s head-only --epochs 5 -o run/
        """
        from .. import api
        from ..cli import echo_json
        from ..errors import UsageError

        if not backbone:
            raise UsageError("give a backbone: --backbone NAME, or backbone: NAME in --config")
        result = api.finetune(
            images,
            backbone=backbone,
            strategy=strategy,
            out=out,
            head=head,
            epochs=list(epochs) or None,
            learning_rate=list(learning_rate) or None,
            unfreeze_from=unfreeze_from,
            augment=augment,
            label_smoothing=label_smoothing,
            batch_size=batch_size,
            input_size=input_size,
            weights=weights,
            task=task,
            split=tuple(split),
            test=test,
            seed=seed,
            patience=patience,
            max_epochs=max_epochs,
            train_bn=train_bn,
            precision=precision,
            deterministic=deterministic,
            tensorboard=tensorboard,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
        )
        if as_json:
            echo_json(result)
        else:
            print_finetune_summary(result)
