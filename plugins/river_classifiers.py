"""Built-in river classifiers: online learners for ``transferkit stream`` (and spot-checks).

All are incremental. Pipelines whose every step has ``learn_many`` (the scaler, one-vs-rest
logistic regression, Gaussian naive Bayes) learn a whole batch from a pandas DataFrame at a time;
the Hoeffding trees learn row by row with ``learn_one``. ``learn_many`` takes one mean-gradient
step per batch, so the mini-batch logistic regression uses a larger learning rate than river's
per-row default.

river models can only be pickled: a saved river model loads only with ``--trust``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transferkit import ClassifierSpec, hookimpl


def river_logreg(lr: float = 0.5, l2: float = 0.0) -> Any:
    """StandardScaler | OneVsRest(LogisticRegression(SGD(lr)))."""
    from river import linear_model, multiclass, optim, preprocessing

    return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
        linear_model.LogisticRegression(optimizer=optim.SGD(lr), l2=l2)
    )


def river_perceptron() -> Any:
    """StandardScaler | OneVsRest(Perceptron)."""
    from river import linear_model, multiclass, preprocessing

    return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
        linear_model.Perceptron()
    )


def river_gaussian_nb() -> Any:
    from river import naive_bayes

    return naive_bayes.GaussianNB()


def river_hoeffding_tree(grace_period: int = 200) -> Any:
    from river import tree

    return tree.HoeffdingTreeClassifier(grace_period=grace_period)


def river_hoeffding_adaptive_tree(grace_period: int = 200) -> Any:
    from river import tree

    return tree.HoeffdingAdaptiveTreeClassifier(grace_period=grace_period, seed=0)


ENTRIES: list[tuple[str, str, Callable[..., Any]]] = [
    (
        "river-logreg",
        "river StandardScaler | OneVsRest(LogisticRegression), learn_many",
        river_logreg,
    ),
    (
        "river-perceptron",
        "river StandardScaler | OneVsRest(Perceptron), learn_many",
        river_perceptron,
    ),
    ("river-gaussian-nb", "river GaussianNB, learn_many", river_gaussian_nb),
    ("river-hoeffding-tree", "river HoeffdingTreeClassifier, learn_one", river_hoeffding_tree),
    (
        "river-hoeffding-adaptive-tree",
        "river HoeffdingAdaptiveTreeClassifier, learn_one",
        river_hoeffding_adaptive_tree,
    ),
]


@hookimpl
def register_classifiers(register: Callable[[ClassifierSpec], None]) -> None:
    for name, description, factory in ENTRIES:
        register(
            ClassifierSpec(
                name=name,
                description=description,
                factory=factory,
                incremental=True,
                library="river",
                groups=("river", "incremental", "all"),
            )
        )
