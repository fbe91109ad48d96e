"""``transferkit serve``: a trained model over HTTP."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import ServeOptions
from .options import from_fields


def register(cli: click.Group) -> None:
    @cli.command("serve")
    @click.argument("model_path", metavar="MODEL", type=click.Path())
    @from_fields(ServeOptions)
    @config_options
    def serve_command(model_path: str, **values: Any) -> None:
        """Serve MODEL (from train, stream or finetune) over HTTP until Ctrl-C or SIGTERM.

        GET /health, GET /metadata (classes, recipe, input size), POST /predict with one image
        as the body (Content-Type: image/*) or several as multipart/form-data: JSON with the
        label, its probability and the top classes, as `transferkit predict` gives them.
        Concurrent requests share forward passes (--max-batch, --max-wait-ms).

        \b
        Example:
          transferkit serve model.skops --port 8000
          curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' localhost:8000/predict
        """
        from .. import api

        api.serve(model_path, options=ServeOptions.of(values=values))
