"""``transferkit predict``: classify images with a saved model."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import PredictOptions
from .options import from_fields


def register(cli: click.Group) -> None:
    @cli.command("predict")
    @click.argument("model_path", metavar="MODEL", type=click.Path())
    @click.argument("images", nargs=-1, required=True, type=click.Path())
    @from_fields(PredictOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @config_options
    def predict_command(
        model_path: str, images: tuple[str, ...], as_json: bool, **values: Any
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
          transferkit predict model.skops new-photos/ --coverage 0.9 --csv predictions.csv
        """
        from .. import api
        from ..cli import echo_json, print_table

        options = PredictOptions.of(values=values)
        result = api.predict(model_path, images, options=options)
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
                    **_trust_columns(p, options.coverage),
                    **(
                        {
                            "runners-up": ", ".join(
                                f"{t['label']} {t['probability']:.3f}" for t in shown[1:]
                            )
                        }
                        if options.top > 1
                        else {}
                    ),
                }
            )
        labelled = "accuracy" in result
        columns = ["image", *(["true"] if labelled else []), "class", "probability"] + (
            ["runners-up"] if options.top > 1 else []
        )
        columns += [c for c in ("set", "ood", "unfamiliar") if any(c in r for r in rows)]
        print_table(rows, columns)
        if labelled and result["accuracy"] is not None:
            click.echo(
                f"\naccuracy {result['accuracy']:.4f} on {result['labelled']} labelled images"
            )
        if result.get("confusion"):
            click.echo(f"Confusion matrix: {result['confusion']}")
        if result.get("csv"):
            click.echo(f"Predictions written to {result['csv']}")


def _trust_columns(p: dict[str, Any], coverage: float | None) -> dict[str, str]:
    """The table's prediction set, ood_score and unfamiliar columns of one image."""
    shown: dict[str, str] = {}
    if coverage is not None and "prediction_set" in p:
        shown["set"] = "{" + ", ".join(p["prediction_set"]) + "}"
    if "ood_score" in p:
        shown["ood"] = f"{p['ood_score']:.3f}"
        shown["unfamiliar"] = "yes" if p["unfamiliar"] else ""
    return shown
