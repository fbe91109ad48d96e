"""The feature cache: an image folder's features under a backbone setting, extracted once.

A store is kept under a key of the backbone, weights, input size, pooling, precision and the
image list (paths, labels, sizes, modification times: :func:`image_list_digest`), so a second
spot-check or demo over the same images extracts nothing. The cache lives in
``<cache root>/features`` (:func:`transferkit.inference.cache_root`) unless a folder is given.
Recipes that differ only in their pooling are extracted together, from one pass of the network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .. import outputs
from ..options import CacheOptions, ExtractOptions
from ..recipe import FeatureRecipe, parse_precision


def default_cache_dir() -> Path:
    from ..inference import cache_root

    return cache_root() / "features"


def parse_backbone(text: str, input_size: Any = None, pooling: str = "avg") -> FeatureRecipe:
    """``NAME[@SIZE][:POOLING]`` (e.g. ``efficientnet-lite0@128:max``) as a :class:`FeatureRecipe`
    (see :meth:`FeatureRecipe.parse`)."""
    return FeatureRecipe.parse(text, input_size=input_size, pooling=pooling)


def image_list_digest(records: list[Any]) -> str:
    """A hash of the images (path, label, size, mtime): any change makes a new cache entry."""
    digest = hashlib.sha256()
    for record in records:
        try:
            st = os.stat(record.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        line = f"{os.path.abspath(record.path)}\0{record.label}\0{stamp}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # names that are not UTF-8
    return digest.hexdigest()


def cache_key(
    setting: FeatureRecipe | dict[str, Any], weights: Any, images_digest: str, precision: Any = "32"
) -> str:
    """The feature cache's key of ``setting`` (a recipe, or a mapping of its fields) with these
    weights and precision over an image list; see :meth:`FeatureRecipe.cache_key`."""
    if not isinstance(setting, FeatureRecipe):
        setting = FeatureRecipe(
            backbone=setting["backbone"],
            input_size=setting.get("input_size"),
            pooling=setting.get("pooling") or "avg",
            fingerprint=setting.get("fingerprint") or "",
        )
    recipe = setting.replace(weights=weights, precision=parse_precision(precision))
    return recipe.cache_key(images_digest)


def cached_store(
    images: str | Path,
    setting: FeatureRecipe,
    options: CacheOptions | None = None,
    *,
    spec: Any = None,
) -> tuple[str, bool]:
    """:func:`cached_stores` of one recipe: ``(path, extracted_now)``. ``spec`` is the backbone
    when it is not a registered name (a caller's ``Backbone`` or Keras model)."""
    return cached_stores(images, [setting], options, specs=[spec])[0]


def cached_stores(
    images: str | Path,
    settings: list[FeatureRecipe],
    options: CacheOptions | None = None,
    *,
    specs: list[Any] | None = None,
) -> list[tuple[str, bool]]:
    """The store of ``images`` under each recipe of ``settings`` (with the weights and the
    precision of ``options``), in order: from the cache, or extracted into it, as ``(path,
    extracted_now)``. ``specs`` holds, for a recipe whose backbone is not a registered name, the
    caller's ``Backbone`` or Keras model.

    Recipes that differ only in their pooling and are not cached yet are extracted together:
    one pass of the network writes each pooling's store
    (:func:`transferkit.jobs.extract.extract_many`). Extraction writes to a temporary name and
    renames it when complete, so an interrupted run never leaves a half store that a later run
    would reuse."""
    from ..images import open_source
    from .extract import extract_many

    options = options or CacheOptions()
    recipes = [s.replace(weights=options.weights, precision=options.precision) for s in settings]
    objects = list(specs or [None] * len(recipes))
    cache = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    outputs.check_outside_inputs(cache, [images], "feature cache")
    outputs.ensure_folder(cache)
    digest = image_list_digest(list(open_source(str(images)).records))
    finals = [cache / f"{r.backbone}-{r.cache_key(digest)}.h5" for r in recipes]
    cached = [final.exists() for final in finals]
    groups: list[list[int]] = []  # missing stores, grouped by network
    for i, recipe in enumerate(recipes):
        if cached[i] or any(finals[g[0]] == finals[i] for g in groups):
            continue
        group = next((g for g in groups if recipes[g[0]].same_network(recipe)), None)
        if group is None:
            groups.append([i])
        elif all(recipes[j].pooling != recipe.pooling for j in group):
            group.append(i)
        else:
            groups.append([i])
    for group in groups:
        first = recipes[group[0]]
        partials = {
            recipes[i].pooling: finals[i].with_name(finals[i].stem + ".partial.h5") for i in group
        }
        extract_many(
            str(images),
            backbone=objects[group[0]] or first.backbone,
            outs={p: str(path) for p, path in partials.items()},
            options=ExtractOptions(
                weights=first.weights,
                input_size=first.input_size,
                batch_size=options.batch_size,
                overwrite=True,
                progress=options.progress,
                runtime=options.runtime,
                precision=first.precision,
            ),
        )
        for i in group:
            with outputs.writing(finals[i]):
                os.replace(partials[recipes[i].pooling], finals[i])
    return [(str(final), not was) for final, was in zip(finals, cached, strict=True)]
