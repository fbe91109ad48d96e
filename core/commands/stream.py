"""``transferkit stream``: incremental learning on a store, batch by batch."""

from __future__ import annotations

import click

from ..config import config_options
from .options import model_out_options


def register(cli: click.Group) -> None:
    @cli.command("stream")
    @click.argument("store_path", metavar="STORE", type=click.Path())
    @click.option(
        "--classifier",
        "-c",
        default="softmax",
        show_default=True,
        help="An incremental classifier (`transferkit classifiers` lists incremental=True); "
        "softmax: multinomial logistic regression, averaged SGD on running-standardised features.",
    )
    @click.option("--batch-size", type=int, default=256, show_default=True)
    @click.option(
        "--report-every",
        type=int,
        default=1000,
        show_default=True,
        help="Print the progressive accuracy every N samples.",
    )
    @click.option(
        "--passes",
        type=int,
        default=1,
        show_default=True,
        help="Epochs over the store, each in a fresh seeded order (progressive accuracy: "
        "the first pass).",
    )
    @click.option("--test-size", type=float, default=0.2, show_default=True)
    @click.option(
        "--test",
        "test",
        type=click.Path(),
        default=None,
        help="Score on this store (features of a separate test folder, same recipe and "
        "classes) instead of holding rows out.",
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option(
        "--shuffle-blocks",
        type=int,
        default=4,
        show_default=True,
        help="Batches mixed together in the shuffle buffer (0: store order).",
    )
    @click.option("--out", type=click.Path(dir_okay=False), default=None, help="Save the model.")
    @model_out_options("-p alpha=1e-4")
    @click.option("--store", default=None, help="Store format, when the suffix does not tell.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @config_options
    def stream_command(
        store_path: str,
        classifier: str,
        batch_size: int,
        report_every: int,
        passes: int,
        test_size: float,
        test: str | None,
        seed: int,
        shuffle_blocks: int,
        out: str | None,
        overwrite: bool,
        params: tuple[str, ...],
        store: str | None,
        as_json: bool,
    ) -> None:
        """Learn incrementally from a feature store, reading it batch by batch.

        Each batch is predicted before it is learnt (progressive validation); the running
        accuracy is printed every --report-every samples, then the accuracy on the held-out
        rows. Memory stays bounded by the batch size, whatever the store's size.

        \b
        Example:
          transferkit stream big.zarr --classifier river-logreg --batch-size 512 --out m.pkl
        """
        from .. import api
        from ..cli import echo_json

        result = api.stream(
            store_path,
            classifier=classifier,
            batch_size=batch_size,
            report_every=report_every,
            passes=passes,
            test_size=test_size,
            test=test,
            seed=seed,
            shuffle_blocks=shuffle_blocks,
            out=out,
            overwrite=overwrite,
            store=store,
            params=list(params),
        )
        if as_json:
            echo_json({k: v for k, v in result.items() if k != "report_text"})
            return
        for point in result["progressive"]:
            click.echo(
                f"{point['samples']:>9} samples  progressive accuracy {point['accuracy']:.4f}"
            )
        click.echo("")
        click.echo(result["report_text"].rstrip())
        click.echo("")
        held_out = result["accuracy"]
        click.echo(
            f"{classifier}: {result['n_train']} rows"
            + (f" x {result['passes']} passes" if result["passes"] > 1 else "")
            + " learnt at "
            f"{result['samples_per_second']:.0f} samples/s; progressive accuracy "
            f"{result['progressive_accuracy']:.4f}"
            + (f", held-out accuracy {held_out:.4f}" if held_out is not None else "")
        )
        if result.get("model_path"):
            click.echo(f"model saved to {result['model_path']}")
