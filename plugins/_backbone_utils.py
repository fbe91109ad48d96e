"""Helpers the built-in backbone plugins share: download failures and local weights files."""

from __future__ import annotations

import re
import warnings
from typing import Any

from transferkit import WeightsUnavailableError

OFFLINE_HINT = (
    "use --weights none (random initialisation), --weights PATH (a local weights file), "
    "or the offline pretrained backbone efficientnet-lite0"
)


def is_download_failure(exc: BaseException) -> bool:
    """True for what ``keras.utils.get_file`` raises when a download cannot complete."""
    if isinstance(exc, OSError):  # URLError, socket timeouts, connection resets
        return True
    text = str(exc)
    return "URL fetch failure" in text or "corrupted file" in text


def load_local_weights(model: Any, base: Any, path: str) -> None:
    """Load a local weights file into ``model`` (saved from a backbone model) or, failing that,
    into ``base`` (a plain network file such as Keras's ``..._notop.h5``)."""
    errors = []
    for target in (model, base) if model is not base else (model,):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                target.load_weights(path)
            # Keras loads what matches and only warns about the rest: that is a failure here.
            partial = [
                str(w.message)
                for w in caught
                if re.search(r"skipping|freshly-initiali[sz]ed|mismatch", str(w.message), re.I)
            ]
            if partial:
                raise ValueError(f"the file does not match the network: {partial[0]}")
            return
        except Exception as exc:  # noqa: PERF203 - try the next layout
            errors.append(f"{type(exc).__name__}: {exc}")
    raise WeightsUnavailableError(
        f"cannot load weights file {path!r} into {model.name} ({errors[-1].splitlines()[0]}); "
        f"give a file saved from the same backbone and input size, or --weights none"
    )
