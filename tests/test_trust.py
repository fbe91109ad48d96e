"""How far to trust a prediction: calibration error and calibration in ``train``, conformal
prediction sets, and ``predict``'s ``ood_score``/``unfamiliar``/``prediction_set`` on real
images (the digits as PNG files, photographs as the foreign kind) through the tiny backbone."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_faults import assert_fails_cleanly, assert_succeeds, invoke_cli
from PIL import Image
from sklearn.datasets import load_digits

from transferkit import api, trust
from transferkit.models import load_model, untrusted_types


def test_ece_by_hand() -> None:
    # two bins used: 0.95 confident and right twice, 0.6 confident and right once in two
    proba = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 0])
    assert trust.ece(proba, y) == pytest.approx((2 * 0.05 + 2 * abs(0.5 - 0.6)) / 4)
    assert trust.ece(np.eye(3), np.arange(3)) == 0.0


def test_temperature_undoes_an_overconfident_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in true])
    sharp = trust.temper(true, 1 / 3)  # three times too confident
    t = trust.fit_temperature(sharp, y)
    assert t == pytest.approx(3, rel=0.1)
    assert trust.ece(trust.temper(sharp, t), y) < 0.03 < trust.ece(sharp, y)


def test_conformal_threshold_and_sets() -> None:
    scores = np.linspace(0, 1, 99, endpoint=False)  # n = 99: rank ceil(100 * 0.9) = 90
    assert trust.conformal_threshold(scores, 0.9) == pytest.approx(scores[89])
    assert trust.conformal_threshold(scores[:5], 0.9) == 1.0  # too few: every class
    sets = trust.prediction_sets(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), 0.85)
    assert sets == [[0, 1], [2]]
    assert trust.prediction_sets(np.array([[0.4, 0.3, 0.3]]), 0.1) == [[]]  # none is probable


def test_blocked_neighbours_equal_the_whole_matrix() -> None:
    rng = np.random.default_rng(1)
    Z = trust.centred_unit(rng.normal(size=(300, 16)), np.zeros(16))
    whole = Z @ Z.T
    np.fill_diagonal(whole, -np.inf)
    expected = np.sort(whole, axis=1)[:, ::-1][:, :4]
    found = np.concatenate(
        [s for _, s, _ in trust.neighbours(Z, Z, 4, exclude_self=True, block_floats=1000)]
    )
    assert np.allclose(found, expected, atol=1e-6)


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_train import write_digits

    return write_digits(tmp_path_factory.mktemp("trust") / "digits.h5")


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_train_calibrates_and_reports_ece(digits_store: Path, tmp_path: Path, method: str) -> None:
    saving = method == "temperature"  # the other calibrates without a model to keep
    out = tmp_path / "model" if saving else None
    result = api.train(digits_store, classifier="logistic-regression", calibrate=method, out=out)
    assert 0 <= result["ece"] <= 0.1 and 0 <= result["ece_before"] <= 0.1
    assert result["calibration"] == method and result["accuracy"] > 0.93
    if saving:
        saved = load_model(result["model_path"])  # no --trust: every type is a safe one
        assert saved.trust["conformal"].shape == (result["n_train"],)
        assert untrusted_types(result["model_path"]) == ["transferkit.trust.TemperatureScaled"]
        assert result["accuracy"] == result["accuracy_before"] and result["temperature"] > 0
        assert result["calibration_status"] == "kept"
        assert result["folds_ece"] < result["folds_ece_before"]
        assert result["calibration_support"] >= 0.9  # the fall holds in 9 resamples of 10


def test_a_calibration_kept_needs_its_least_gain_on_held_out_folds(
    digits_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the temperature that lowers the logistic regression's held-out error above is not kept
    # when the least gain asked for is larger than what it gives
    from transferkit.jobs import train_trust

    monkeypatch.setattr(train_trust, "MIN_GAIN", 0.5)
    result = api.train(digits_store, classifier="logistic-regression", calibrate="temperature")
    assert result["folds_ece"] < result["folds_ece_before"]
    assert result["calibration_status"] == "skipped" and result["ece"] == result["ece_before"]


def test_a_calibration_that_does_not_help_on_held_out_folds_is_skipped(
    digits_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 3 nearest neighbours are calibrated on the digits already: a temperature fitted on the
    # other folds raises the held-out folds' error, so the uncalibrated model is kept
    result = api.train(digits_store, classifier="knn-3", calibrate="temperature",
                       out=tmp_path / "knn")  # fmt: skip
    assert result["calibration_status"] == "skipped" and result["calibration"] == "temperature"
    assert result["folds_ece"] >= result["folds_ece_before"]
    assert result["ece"] == result["ece_before"] and "accuracy_before" not in result
    skipped = [r.getMessage() for r in caplog.records if "calibration skipped" in r.getMessage()]
    assert len(skipped) == 1 and "held-out folds" in skipped[0]
    saved = load_model(result["model_path"])
    assert "TemperatureScaled" not in str(untrusted_types(result["model_path"]))
    assert type(saved.estimator).__name__ != "TemperatureScaled"
    # its conformal scores are the uncalibrated held-out probabilities'
    assert saved.trust["conformal"].shape == (result["n_train"],)
    shown = invoke_cli("train", digits_store, "-c", "knn-3", "--calibrate", "temperature")
    assert_succeeds(shown)
    assert "(temperature skipped; before" in shown.stdout


def test_prediction_sets_cover_held_out_digits(digits_store: Path, tmp_path: Path) -> None:
    result = api.train(
        digits_store, classifier="logistic-regression", out=tmp_path / "lr", test_size=0.4
    )
    saved = load_model(result["model_path"])
    X, y = load_digits(return_X_y=True)
    from transferkit.splits import split_indices

    _, test_rows = split_indices(y, 0.4, 0)
    proba = saved.estimator.predict_proba(X[test_rows].astype(np.float32))
    threshold = trust.conformal_threshold(saved.trust["conformal"], 0.9)
    sets = trust.prediction_sets(proba, threshold)
    covered = np.mean([t in s for t, s in zip(y[test_rows], sets, strict=True)])
    assert abs(covered - 0.9) < 0.04, covered
    assert np.mean([len(s) for s in sets]) < 2


def test_a_model_without_conformal_scores_refuses_coverage_in_one_line(
    digits_store: Path, tmp_path: Path
) -> None:
    result = api.train(digits_store, classifier="knn-3", out=tmp_path / "m", conformal=False,
                       reference_size=0)  # fmt: skip
    assert load_model(result["model_path"]).trust == {}
    (tmp_path / "a.png").write_bytes(b"")
    refused = invoke_cli("predict", result["model_path"], tmp_path / "a.png", "--coverage", "0.9")
    assert_fails_cleanly(refused, 2, "keeps no conformal scores")
    assert len(refused.stderr.strip().splitlines()) == 1
    bad = invoke_cli("train", digits_store, "-c", "river-logreg", "--calibrate", "temperature")
    assert_fails_cleanly(bad, 2, "needs a scikit-learn classifier")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digit PNGs (12 per class to train, the demo's new ones to predict) and photographs."""
    from imagefiles import photo

    from transferkit.jobs.demo import write_digits

    root = tmp_path_factory.mktemp("images")
    written = write_digits(root)
    for label in range(10):
        for extra in sorted((root / "images" / str(label)).iterdir())[12:]:
            extra.unlink()
    foreign = root / "photos"
    foreign.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket") * 2):
        photo(name, (40 + 3 * i, 40)).save(foreign / f"{name}-{i}.jpg")
    return {"train": Path(written["images"]), "new": root / "new", "photos": foreign}


@pytest.mark.slow
def test_predict_reports_ood_scores_unfamiliar_and_prediction_sets(
    images: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "lite0.h5"
    api.extract(images["train"], backbone="efficientnet-lite0", input_size=64, out=store,
                progress=False)  # fmt: skip
    model = api.train(store, classifier="logistic-regression", out=tmp_path / "m")["model_path"]
    result = api.predict(model, [images["new"], images["photos"]], coverage=0.9)
    ok = [p for p in result["predictions"] if p["status"] == "ok"]
    digits = [p for p in ok if "photos" not in p["path"]]
    photos = [p for p in ok if "photos" in p["path"]]
    assert len(digits) == 20 and len(photos) == 8
    names = set(result["label_names"])
    for p in ok:
        assert p["prediction_set"][:1] in ([], [p["label"]]) and set(p["prediction_set"]) <= names
        assert isinstance(p["unfamiliar"], bool) and p["ood_score"] >= 0
    assert min(p["ood_score"] for p in photos) > max(p["ood_score"] for p in digits)
    assert all(p["unfamiliar"] for p in photos)
    assert sum(p["unfamiliar"] for p in digits) <= 2
    assert result["coverage"] == 0.9 and result["unfamiliar_threshold"] > 0

    table = tmp_path / "predictions.csv"
    shown = invoke_cli("predict", model, images["photos"], "--coverage", "0.9", "--csv", table)
    assert_succeeds(shown)
    header = shown.stdout.splitlines()[0].split()
    assert header[-3:] == ["SET", "OOD", "UNFAMILIAR"]
    assert shown.stdout.count(" yes") == 8
    rows = list(csv.DictReader(table.open(newline="")))
    by_path = {p["path"]: p for p in ok}
    assert len(rows) == 8 and all(r["path"] in by_path for r in rows)
    for r in rows:
        p = by_path[r["path"]]
        assert r["label"] == p["label"] and r["unfamiliar"] == "true"
        assert float(r["ood_score"]) == pytest.approx(p["ood_score"], abs=1e-5)
        assert r["prediction_set"].split("|") == (p["prediction_set"] or [""])


def test_a_streamed_model_keeps_a_bounded_reference(digits_store: Path, tmp_path: Path) -> None:
    result = api.stream(digits_store, out=tmp_path / "s", reference_size=100, progress=False)
    kept: dict[str, Any] = load_model(result["model_path"]).trust
    assert kept["reference"].shape == (100, 64) and kept["reference"].dtype == np.float16
    assert "conformal" not in kept and 0 < kept["threshold"] < 2


@pytest.mark.slow
def test_finetune_reports_ece_and_fits_the_heads_temperature(
    tmp_path: Path, register_plugin: Any
) -> None:
    from test_trainer_finetune import TinyBackbones
    from trainer_helpers import digits

    from transferkit.errors import UsageError

    register_plugin(TinyBackbones(), "tiny-backbones")
    images, labels, names = digits(90, classes=3)
    folder = tmp_path / "digits"
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / f"digit{names[int(label)]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).resize((16, 16)).save(
            folder / f"digit{names[int(label)]}" / f"{i}.png"
        )
    common: dict[str, Any] = {"backbone": "tiny-blocks", "strategy": "head-only", "epochs": 2,
                              "batch_size": 16, "progress": False}  # fmt: skip
    result = api.finetune(folder, out=tmp_path / "run", calibrate=True, **common)
    assert 0 <= result["test_ece"] <= 1 and 0 <= result["test_ece_before"] <= 1
    temperature = result["temperature"]
    assert temperature > 0
    loaded = api.load_finetuned(tmp_path / "run")
    assert loaded.metadata["temperature"] == pytest.approx(temperature)
    one = sorted((folder / f"digit{names[0]}").iterdir())[0]
    raw, _ = loaded.predict_files([str(one)])
    shown = api.predict(tmp_path / "run", [str(one)])["predictions"][0]
    expected = trust.temper(raw, temperature)[0]
    assert shown["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
    with pytest.raises(UsageError, match="validation split"):
        api.finetune(folder, out=tmp_path / "x", calibrate=True, split=(0.8, 0, 0.2), **common)
    assert not (tmp_path / "x" / "history.csv").exists()  # refused before any epoch

    # the trust record in model.keras: every training row is in the reference (90 images, at
    # most 1000 kept), so each training image predicted from its file is at distance ~0 from
    # itself; the conformal scores are the validation split's
    from transferkit.jobs.finetune_trust import read_record

    record = read_record(tmp_path / "run" / "model.keras")
    assert result["reference_rows"] == len(record["reference"]) == result["data"]["train"]
    assert result["conformal_scores"] == len(record["conformal"]) == result["data"]["val"]
    every = sorted(str(p) for p in folder.rglob("*.png"))
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(noise)
    table = tmp_path / "predictions.csv"
    found = api.predict(tmp_path / "run", [*every, str(noise)], coverage=0.9, csv=str(table))
    scores = [p["ood_score"] for p in found["predictions"]]
    assert sum(s < 5e-3 for s in scores[:-1]) >= len(record["reference"])
    assert scores[-1] > 5e-3 and found["predictions"][-1]["unfamiliar"] == (
        scores[-1] > found["unfamiliar_threshold"]
    )
    assert found["unfamiliar_threshold"] == pytest.approx(record["threshold"])
    # the sets are made from the network's own (untempered) probabilities
    raw, _ = loaded.predict_files(every)
    threshold = trust.conformal_threshold(record["conformal"], 0.9)
    expected = [[loaded.label_names[k] for k in s] for s in trust.prediction_sets(raw, threshold)]
    assert [p["prediction_set"] for p in found["predictions"][:-1]] == expected
    assert found["coverage"] == 0.9 and any(expected)
    rows = list(csv.DictReader(table.open(newline="")))
    assert [r["path"] for r in rows] == [*every, str(noise)] and found["csv"] == str(table)
    assert [r["prediction_set"] for r in rows[:-1]] == ["|".join(e) for e in expected]
    assert [float(r["ood_score"]) for r in rows] == pytest.approx(scores, abs=1e-5)
    # a damaged record is one line, never a traceback
    import zipfile

    damaged = tmp_path / "damaged.keras"
    with (
        zipfile.ZipFile(tmp_path / "run" / "model.keras") as src,
        zipfile.ZipFile(damaged, "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item) if item.filename != "transferkit-trust.npz" else b"not npz"
            dst.writestr(item, data)
    broken = invoke_cli("predict", damaged, str(one))
    assert_fails_cleanly(broken, 1, "damaged transferkit-trust.npz")
    assert "allow_pickle" not in broken.stderr and broken.stderr.count("Error:") == 1
    # without a validation split there are no conformal scores: --coverage is one line
    bare = api.finetune(folder, out=tmp_path / "bare", split=(0.8, 0, 0.2), **common)
    assert "conformal_scores" not in bare and bare["reference_rows"] > 0
    refused = invoke_cli("predict", tmp_path / "bare", str(one), "--coverage", "0.9")
    assert_fails_cleanly(refused, 2, "fine-tuned model, which keeps no conformal scores")


def test_predict_csv_never_replaces_a_file_it_did_not_write(tmp_path: Path) -> None:
    from transferkit.jobs.predict import CSV_FIELDS

    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    (tmp_path / "images").mkdir()
    refused = invoke_cli("predict", tmp_path / "m.skops", tmp_path / "images", "--csv", notes)
    assert_fails_cleanly(refused, 2, "is not a predictions CSV transferkit wrote")
    assert notes.read_text() == "a,b\n1,2\n"
    inside = invoke_cli("predict", tmp_path / "m.skops", tmp_path / "images", "--csv",
                        tmp_path / "images" / "p.csv")  # fmt: skip
    assert_fails_cleanly(inside, 2, "lies inside")
    assert not (tmp_path / "images" / "p.csv").exists() and CSV_FIELDS[0] == "path"


def test_a_damaged_trust_record_fails_in_one_line(digits_store: Path, tmp_path: Path) -> None:
    from transferkit.errors import TransferkitError
    from transferkit.models import save_model

    saved = load_model(api.train(digits_store, classifier="knn-3", out=tmp_path / "m",
                                 conformal=False)["model_path"])  # fmt: skip
    for damage, why in (
        ({"reference": np.zeros((4, 5), np.float16)}, "reference sample has 5 features"),
        ({"conformal": np.zeros((2, 2))}, "conformal scores are not a vector"),
        ({"surprise": 1}, "unknown trust keys"),
    ):
        saved.trust = {**saved.trust, **damage}
        path = save_model(saved, tmp_path / "damaged.skops")
        with pytest.raises(TransferkitError, match=why):
            load_model(path)
        saved.trust = {k: v for k, v in saved.trust.items() if k not in damage}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["predict", "m.skops", "a.png", "--coverage", "1.5"],
            "--coverage must be between 0 and 1",
        ),
        (["train", "s.h5", "-c", "knn-3", "--folds", "1"], "--folds must be at least 2"),
        (
            ["train", "s.h5", "-c", "knn-3", "--conformal-folds", "1"],
            "--conformal-folds must be at least 2",
        ),
        (["train", "s.h5", "-c", "knn-3", "--reference-size", "-1"], "--reference-size must be 0"),
        (["stream", "s.h5", "--unfamiliar-quantile", "1"], "--unfamiliar-quantile must be between"),
        (["audit", "s.h5", "--duplicate-similarity", "2"], "is a cosine similarity, -1 to 1"),
        (["audit", "s.h5", "--k", "0"], "--k must be positive"),
        (["train", "s.h5", "-c", "knn-3", "--calibrate", "platt"], "'platt' is not one of"),
    ],
)
def test_trust_and_audit_values_are_checked_on_their_flags(args: list[str], needle: str) -> None:
    assert_fails_cleanly(invoke_cli(*args), 2, needle)  # refused before any file is looked at


def test_spotcheck_rows_report_the_ece_train_reports(digits_store: Path) -> None:
    report = api.spotcheck([str(digits_store)], classifiers="logistic-regression,knn-3",
                           isolate=False, progress=False)  # fmt: skip
    for row in report["rows"]:
        alone = api.train(digits_store, classifier=row["classifier"])
        assert row["ece"] == pytest.approx(alone["ece"]) and 0 <= row["ece"] < 0.2


@pytest.fixture(scope="module")
def digits_held_out() -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of the 1,797 digits: a logistic regression over 5 folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(model, X, y, cv=folds, method="predict_proba"), y


def test_the_support_of_a_fall_of_the_error_counts_resamples_of_the_rows(
    digits_held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    proba, y = digits_held_out
    # each round is the error of the same resample of the rows, before and after
    rng = np.random.default_rng(3)
    sharper = trust.temper(proba, 0.8)
    draws = [rng.integers(0, len(y), len(y)) for _ in range(40)]
    by_hand = np.mean([trust.ece(sharper[r], y[r]) < trust.ece(proba[r], y[r]) for r in draws])
    assert trust.ece_gain_support(proba, sharper, y, rounds=40, seed=3) == by_hand
    # no change is never a fall; a large one is one in every resample
    assert trust.ece_gain_support(proba, proba, y) == 0.0
    unsure = trust.temper(proba, 3.0)
    assert trust.ece(unsure, y) > trust.ece(proba, y) + 0.1
    assert trust.ece_gain_support(unsure, proba, y) == 1.0
    assert trust.ece_gain_support(proba, unsure, y) == 0.0
    # a temperature of 0.5 lowers the 1,797 rows' error by about 0.001, a fall that many
    # resamples of the same rows do not show; 0.8 lowers it by about 0.008, and nearly all do
    halved = trust.temper(proba, 0.5)
    assert trust.ece(halved, y) < trust.ece(proba, y)
    assert (
        trust.ece_gain_support(proba, halved, y) < 0.9 < trust.ece_gain_support(proba, sharper, y)
    )


def test_a_calibration_kept_needs_its_fall_in_most_resamples_of_the_rows(
    digits_store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the temperature that lowers the held-out folds' error of the digits by more than the least
    # gain is skipped when the share of resamples asked for is more than the rows show
    from transferkit.jobs import train_trust

    monkeypatch.setattr(train_trust, "MIN_SUPPORT", 1.01)
    result = api.train(digits_store, classifier="logistic-regression", calibrate="temperature")
    assert result["folds_ece"] <= result["folds_ece_before"] - train_trust.MIN_GAIN
    assert result["calibration_status"] == "skipped" and result["ece"] == result["ece_before"]
    assert 0.9 <= result["calibration_support"] <= 1
    skipped = [r.getMessage() for r in caplog.records if "calibration skipped" in r.getMessage()]
    assert len(skipped) == 1 and "resamples of their rows" in skipped[0]


def test_conformal_scores_come_from_folds_closer_to_the_saved_model(
    digits_store: Path, tmp_path: Path
) -> None:
    # copies fitted on 9/10 of the rows are surer than copies fitted on 4/5, as the saved model
    # (fitted on all) is: their scores are lower on the whole
    scores = {}
    for folds in (5, 10):
        result = api.train(digits_store, classifier="logistic-regression", reference_size=0,
                           conformal_folds=folds, out=tmp_path / f"lr{folds}")  # fmt: skip
        scores[folds] = load_model(result["model_path"]).trust["conformal"]
        assert scores[folds].shape == (result["n_train"],)
    assert scores[10].mean() < scores[5].mean()
