"""``transferkit predict``: classify images with a saved model."""

from __future__ import annotations

import click

from ..config import config_options
from .options import runtime_options


def register(cli: click.Group) -> None:
    @cli.command("predict")
    @click.argument("model_path", metavar="MODEL", type=click.Path())
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @click.option(
        "--trust",
        is_flag=True,
        help="Allow loading a pickled model (river), which can run code: only for your own files.",
    )
    @click.option("--top", type=int, default=1, show_default=True, help="Classes shown per image.")
    @click.option("--batch-size", type=int, default=32, show_default=True)
    @runtime_options(precision_default=None)
    @click.option(
        "--out",
        type=click.Path(dir_okay=False),
        default=None,
        help="With a labelled folder (one sub-folder per class): write its confusion matrix "
        "picture here (.png).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @config_options
    def predict_command(
        model_path: str,
        images: tuple[str, ...],
        trust: bool,
        top: int,
        batch_size: int,
        runtime: str,
        precision: str | None,
        out: str | None,
        as_json: bool,
    ) -> None:
        """Predict the class of images (files or folders) with a model from train, stream or
        finetune.

        The images go through the backbone, input size and pooling the model's features were
        made with; each gets its predicted class and probability. A fine-tuned model (the
        model.keras of `transferkit finetune`, or its folder) carries its own preprocessing.

        \b
        Example:
          transferkit predict model.skops photos/cat.jpg photos/dog.png
          transferkit predict model.pkl new-images/ --trust --json
          transferkit predict run/model.keras new-images/
          transferkit predict model.skops test-photos/ --out confusion.png   # labelled folder
        """
        from .. import api
        from ..cli import echo_json, print_table

        result = api.predict(
            model_path,
            images,
            trust=trust,
            top=top,
            batch_size=batch_size,
            runtime=runtime,
            precision=precision,
            out=out,
        )
        if as_json:
            echo_json(result)
            return
        rows = []
        for p in result["predictions"]:
            if p["status"] != "ok":
                rows.append(
                    {
                        "image": p["path"],
                        "true": p.get("true", ""),
                        "class": "-",
                        "probability": p["reason"],
                    }
                )
                continue
            shown = p.get("top") or [{"label": p["label"], "probability": p["probability"]}]
            rows.append(
                {
                    "image": p["path"],
                    "true": p.get("true", ""),
                    "class": p["label"],
                    "probability": "" if p["probability"] is None else f"{p['probability']:.3f}",
                    **(
                        {
                            "runners-up": ", ".join(
                                f"{t['label']} {t['probability']:.3f}" for t in shown[1:]
                            )
                        }
                        if top > 1
                        else {}
                    ),
                }
            )
        labelled = "accuracy" in result
        columns = ["image", *(["true"] if labelled else []), "class", "probability"] + (
            ["runners-up"] if top > 1 else []
        )
        print_table(rows, columns)
        if labelled and result["accuracy"] is not None:
            click.echo(
                f"\naccuracy {result['accuracy']:.4f} on {result['labelled']} labelled images"
            )
        if result.get("confusion"):
            click.echo(f"Confusion matrix: {result['confusion']}")
