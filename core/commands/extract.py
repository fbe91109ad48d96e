"""``transferkit extract``: images -> backbone -> HDF5/Zarr feature store."""

from __future__ import annotations

from typing import Any

import click

from ..config import config_options
from ..options import ExtractOptions
from .options import from_fields, require


def print_extract_summary(result: dict[str, Any]) -> None:
    computed = result.get("computed", result["rows"])
    if result.get("resumed") and result.get("resumed_from") and computed <= 0:
        click.echo(
            f"Nothing left to extract: all {result['resumed_from']} images were already done; "
            f"{result['path']} holds {result['rows']} feature vectors."
        )
    else:
        stream = result.get("stream_seconds", result["seconds"])
        click.echo(
            f"Wrote {result['rows']} feature vectors ({result['feature_dim']}-d, "
            f"{result['backbone']}, {result['pooling']} pooling, "
            f"{result.get('runtime', 'keras')} runtime, {result.get('precision', '32')}-bit) to "
            f"{result['path']} in {result['seconds']:.1f} s wall time "
            f"({result['seconds'] - stream:.1f} s building the network and pipeline, then "
            f"{result['images_per_second']:.1f} images/s streaming for {stream:.1f} s)."
        )
    if result.get("scheduler"):
        before = result.get("shards_before") or 0
        click.echo(
            f"On the Dask cluster {result['scheduler']}: {result.get('workers')} workers, "
            f"{result.get('shards')} shards of {result.get('shard_rows')} images"
            + (f" ({before} complete before this run)." if before else ".")
        )
    if result.get("resumed") and result.get("resumed_from") and computed > 0:
        click.echo(f"Resumed: {result['resumed_from']} images were already done.")
    skipped = result["skipped_files"]
    if skipped:
        click.echo(f"Skipped {len(skipped)} file(s) that could not be used:")
        for path, reason in skipped[:20]:
            click.echo(f"  {path}: {reason}")
        if len(skipped) > 20:
            click.echo(f"  ... and {len(skipped) - 20} more (listed in the store's metadata)")
    else:
        click.echo("Skipped 0 files.")
    if result.get("empty_classes"):
        click.echo("Empty class folders (left out): " + ", ".join(result["empty_classes"]))
    if result.get("written_images"):
        w = result["written_images"]
        click.echo(f"Wrote {w['written']} images as read to {w['out']}.")


def register(cli: click.Group) -> None:
    @cli.command("extract")
    @click.argument("images", type=click.Path(exists=True))
    @click.option("--backbone", "-b", default=None, help="Backbone name (see `backbones`).")
    @click.option(
        "--out", "-o", default=None, type=click.Path(), help="Store path: .h5, .hdf5 or .zarr."
    )
    @from_fields(ExtractOptions)
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @config_options
    def extract_command(
        images: str, backbone: str | None, out: str | None, as_json: bool, **values: Any
    ) -> None:
        """Extract one feature vector per image into an HDF5 or Zarr store.

        IMAGES is a folder with one sub-folder per class (searched recursively) or a CSV/JSON
        list of path,label. Files that cannot be decoded are skipped and recorded in the store
        with their reason (--strict makes them an error). An interrupted run continues with
        --resume; an existing OUT is never replaced without --overwrite.

        \b
        Example:
          transferkit extract photos/ --backbone efficientnet-lite0 --out features.h5
          transferkit extract photos/ -b mobilenet-v2 --weights none -o f.zarr --task rotation
          transferkit extract /shared/photos -b efficientnet-lite0 -o /shared/f.zarr \\
              --scheduler tcp://10.0.0.5:8786
        """
        from .. import api
        from ..cli import emit

        require(backbone=backbone, out=out)
        result = api.extract(
            images, backbone=backbone, out=out, options=ExtractOptions.of(values=values)
        )
        emit(result, as_json, print_extract_summary)
