"""efficientnet-lite0: the safe torch-file reader, the port, the cache, the ImageNet top-1."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest

from transferkit.plugins import _torch_legacy as legacy
from transferkit.plugins import efficientnet_lite as lite


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One conversion for the whole module, in a private cache directory."""
    path = str(tmp_path_factory.mktemp("tkcache"))
    old = os.environ.get("TRANSFERKIT_CACHE")
    os.environ["TRANSFERKIT_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("TRANSFERKIT_CACHE", None)
    else:
        os.environ["TRANSFERKIT_CACHE"] = old


def _legacy_file(main_pickle: bytes, keys: list[str], records: list[bytes]) -> io.BytesIO:
    """A legacy torch.save stream around ``main_pickle``."""
    out = io.BytesIO()
    pickle.dump(legacy.MAGIC_NUMBER, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True}, out, protocol=2)
    out.write(main_pickle)
    pickle.dump(keys, out, protocol=2)
    for record in records:
        out.write(record)
    out.seek(0)
    return out


def test_reads_the_shipped_weights_without_torch() -> None:
    state = legacy.load_state_dict(lite.pth_path())
    assert len(state) == 296
    stem = state["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.dtype == np.float32
    assert np.isfinite(stem).all() and stem.std() > 0
    assert state["_fc.weight"].shape == (1000, 1280)
    assert (state["_bn1.running_var"] > 0).all()  # variances: a misaligned read would break this
    import sys

    assert "torch" not in sys.modules


# Hand-written pickle opcodes (protocol 2), so the tests need neither torch nor tricks.
PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
EMPTY_DICT, SETITEM, REDUCE, BINPERSID, NONE, FALSE = b"}", b"s", b"R", b"Q", b"N", b"\x89"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def test_malicious_pickle_is_refused_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps({"weight": Evil()}, protocol=2)  # names posix.system
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        legacy.load_state_dict(_legacy_file(payload, [], []))
    hand_made = PROTO + _global("os", "system") + _tuple(_str(f"touch {marker}")) + REDUCE + STOP
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        legacy.load_state_dict(_legacy_file(hand_made, [], []))
    evaluate = PROTO + _global("builtins", "eval") + _tuple(_str("1 + 1")) + REDUCE + STOP
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        legacy.load_state_dict(_legacy_file(evaluate, [], []))
    assert not marker.exists()
    # The storage list after the state dict is read with no globals at all.
    with pytest.raises(pickle.UnpicklingError):
        legacy.load_state_dict(io.BytesIO(hand_made))


def test_handmade_legacy_file_round_trips_a_strided_tensor() -> None:
    # A (2, 3) tensor read with strides (1, 2) from element 1 of a 7-element float storage "7".
    storage = _tuple(
        _str("storage"), _global("torch", "FloatStorage"), _str("7"), _str("cpu"), _int(7), NONE
    )
    tensor = (
        _global("torch._utils", "_rebuild_tensor_v2")
        + _tuple(
            storage + BINPERSID,
            _int(1),
            _tuple(_int(2), _int(3)),
            _tuple(_int(1), _int(2)),
            FALSE,
            _global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE,
        )
        + REDUCE
    )
    main = PROTO + EMPTY_DICT + _str("t") + tensor + SETITEM + STOP
    data = np.arange(7, dtype="<f4")
    record = struct.pack("<q", 7) + data.tobytes()
    state = legacy.load_state_dict(_legacy_file(main, ["7"], [record]))
    expected = np.lib.stride_tricks.as_strided(data[1:], (2, 3), (4, 8))
    np.testing.assert_array_equal(state["t"], expected)
    assert state["t"].flags.writeable
    # A record shorter than its storage is an error, not garbage.
    with pytest.raises(ValueError, match="truncated"):
        legacy.load_state_dict(_legacy_file(main, ["7"], [record[:-4]]))


def test_espresso_is_classified_as_espresso(cache) -> None:
    from skimage import data

    top = lite.classify(data.coffee(), top=5)[0]
    assert top[0]["index"] == 967 and top[0]["name"] == "espresso"
    assert top[0]["probability"] > 0.5
    assert os.listdir(cache)  # the converted weights were cached


def test_cat_photo_gets_a_cat_class(cache) -> None:
    from skimage import data

    top = lite.classify(data.chelsea(), top=1)[0][0]
    assert 281 <= top["index"] <= 285, top  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_backbone_features_and_cached_file_reuse(cache) -> None:
    from transferkit import pool, registry

    spec = registry.backbone("efficientnet-lite0")
    assert spec.feature_dims["avg"] == 1280 and spec.input_size == (224, 224)
    first = lite.converted_weights_path()
    mtime = first.stat().st_mtime_ns
    backbone = pool(spec.factory(input_size=(64, 64)), "avg")
    assert lite.converted_weights_path() == first and first.stat().st_mtime_ns == mtime
    assert backbone.feature_dim == 1280
    assert backbone.model.layers[-1].name == "avg_pool"
    assert "imagenet" in backbone.weights_source
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    features = np.asarray(backbone.model(backbone.preprocess(images)))
    assert features.shape == (2, 1280) and (features >= 0).all() and features.max() > 0
    flat = spec.factory(weights=None, input_size=(64, 64))
    assert flat.feature_dim == 2 * 2 * 1280
    assert flat.weights_source == "random initialisation"
    assert flat.describe()["feature_dims"] == {"avg": 1280, "max": 1280, "flatten": 2 * 2 * 1280}
