"""Built-in scikit-learn classifiers on feature vectors.

Groups:

* ``classic``: the 40 configurations of the classic spot-check recipe (logistic regression, SGD,
  passive-aggressive, decision tree, extra tree, five 100-estimator ensembles, k-NN with k = 3..24,
  LinearSVC and RidgeClassifier with C/alpha in {0.001, 0.01, 1, 10});
* ``fast``: a handful that fit in seconds on a few thousand 1,280-d rows (the demo's grid);
* ``linear``: the linear models;
* ``incremental``: models that learn batch by batch with ``partial_fit`` (``transferkit stream``);
* ``all``: every classifier of this plugin.

Linear models, k-NN and the MLP work on standardised features (a ``StandardScaler`` in a
``Pipeline``); trees do not need it. The multinomial naive Bayes needs non-negative counts, so it
reads features through a ``MinMaxScaler(clip=True)`` that maps them to [0, 1] (its range grows
with each ``partial_fit``; values outside the range seen so far are clipped).

scikit-learn 1.9 deprecates ``PassiveAggressiveClassifier``; ``passive-aggressive`` is its
documented equivalent, ``SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1",
eta0=1.0)``.

Nothing here imports scikit-learn at module level: listing classifiers stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transferkit import ClassifierSpec, hookimpl

CLASSIC_C = (0.001, 0.01, 1, 10)
KNN_KS = tuple(range(3, 25))


def _scaled(estimator: Any, scaler: str = "standard") -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    first = StandardScaler() if scaler == "standard" else MinMaxScaler(clip=True)
    return Pipeline([("scale", first), ("model", estimator)])


def _fmt(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------------- factories


def logistic_regression(C: float = 1.0, max_iter: int = 1000) -> Any:
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(C=C, max_iter=max_iter))


def logistic_regression_cv(cv: int = 5, max_iter: int = 1000) -> Any:
    """LogisticRegressionCV on all cores, the classic recipe's single classifier."""
    from sklearn.linear_model import LogisticRegressionCV

    return _scaled(LogisticRegressionCV(cv=cv, max_iter=max_iter, n_jobs=-1))


def sgd(loss: str = "hinge", alpha: float = 0.0001) -> Any:
    from sklearn.linear_model import SGDClassifier

    return _scaled(SGDClassifier(loss=loss, alpha=alpha))


def passive_aggressive(C: float = 1.0) -> Any:
    from sklearn.linear_model import SGDClassifier

    return _scaled(SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=C))


def perceptron() -> Any:
    from sklearn.linear_model import Perceptron

    return _scaled(Perceptron())


def decision_tree() -> Any:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier()


def extra_tree() -> Any:
    from sklearn.tree import ExtraTreeClassifier

    return ExtraTreeClassifier()


def adaboost(n_estimators: int = 100) -> Any:
    from sklearn.ensemble import AdaBoostClassifier

    return AdaBoostClassifier(n_estimators=n_estimators)


def bagging(n_estimators: int = 100) -> Any:
    from sklearn.ensemble import BaggingClassifier

    return BaggingClassifier(n_estimators=n_estimators)


def random_forest(n_estimators: int = 100) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=n_estimators)


def extra_trees(n_estimators: int = 100) -> Any:
    from sklearn.ensemble import ExtraTreesClassifier

    return ExtraTreesClassifier(n_estimators=n_estimators)


def gradient_boosting(n_estimators: int = 100) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier

    return GradientBoostingClassifier(n_estimators=n_estimators)


def knn(n_neighbors: int = 5) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(n_neighbors=n_neighbors))


def linear_svc(C: float = 1.0) -> Any:
    from sklearn.svm import LinearSVC

    return _scaled(LinearSVC(C=C, max_iter=5000))


def ridge(alpha: float = 1.0) -> Any:
    from sklearn.linear_model import RidgeClassifier

    return _scaled(RidgeClassifier(alpha=alpha))


def gaussian_nb() -> Any:
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


def multinomial_nb(alpha: float = 1.0) -> Any:
    from sklearn.naive_bayes import MultinomialNB

    return _scaled(MultinomialNB(alpha=alpha), scaler="minmax")


def bernoulli_nb(alpha: float = 1.0) -> Any:
    """Features standardised, then binarised at 0 (above or below the running mean)."""
    from sklearn.naive_bayes import BernoulliNB

    return _scaled(BernoulliNB(alpha=alpha, binarize=0.0))


def mlp(hidden: int = 128, max_iter: int = 200) -> Any:
    from sklearn.neural_network import MLPClassifier

    return _scaled(MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter))


def nearest_centroid() -> Any:
    from sklearn.neighbors import NearestCentroid

    return _scaled(NearestCentroid())


def _bind(factory: Callable[..., Any], **params: Any) -> Callable[..., Any]:
    """``factory`` with default ``params``; call-time parameters override them."""

    def bound(**overrides: Any) -> Any:
        return factory(**{**params, **overrides})

    bound.__name__ = bound.__qualname__ = factory.__name__
    bound.__module__ = factory.__module__
    bound.__doc__ = factory.__doc__
    return bound


# ---------------------------------------------------------------------- the table

# (name, description, factory, incremental, groups)
Entry = tuple[str, str, Callable[..., Any], bool, tuple[str, ...]]


def classic_entries() -> list[Entry]:
    """The 40 configurations of the classic spot-check, in the recipe's order."""
    entries: list[Entry] = [
        ("logistic-regression", "LogisticRegression", logistic_regression, False, ("linear",)),
        ("sgd", "SGDClassifier (hinge loss)", sgd, True, ("linear", "incremental")),
        (
            "passive-aggressive",
            "PassiveAggressive: SGDClassifier(loss=hinge, penalty=None, learning_rate=pa1)",
            passive_aggressive,
            True,
            ("linear", "incremental"),
        ),
        ("decision-tree", "DecisionTreeClassifier", decision_tree, False, ()),
        ("extra-tree", "ExtraTreeClassifier", extra_tree, False, ()),
        ("adaboost", "AdaBoostClassifier, 100 estimators", adaboost, False, ()),
        ("bagging", "BaggingClassifier, 100 estimators", bagging, False, ()),
        ("random-forest", "RandomForestClassifier, 100 estimators", random_forest, False, ()),
        ("extra-trees", "ExtraTreesClassifier, 100 estimators", extra_trees, False, ()),
        (
            "gradient-boosting",
            "GradientBoostingClassifier, 100 estimators",
            gradient_boosting,
            False,
            (),
        ),
    ]
    for k in KNN_KS:
        entries.append(
            (f"knn-{k}", f"KNeighborsClassifier, k={k}", _bind(knn, n_neighbors=k), False, ())
        )
    for c in CLASSIC_C:
        entries.append(
            (
                f"linear-svc-{_fmt(c)}",
                f"LinearSVC, C={_fmt(c)}",
                _bind(linear_svc, C=c),
                False,
                ("linear",),
            )
        )
    for a in CLASSIC_C:
        entries.append(
            (
                f"ridge-{_fmt(a)}",
                f"RidgeClassifier, alpha={_fmt(a)}",
                _bind(ridge, alpha=a),
                False,
                ("linear",),
            )
        )
    return [(n, d, f, inc, ("classic", *g)) for n, d, f, inc, g in entries]


def extra_entries() -> list[Entry]:
    inc = ("incremental",)
    return [
        (
            "logreg-cv",
            "LogisticRegressionCV on all cores (the classic recipe's classifier)",
            logistic_regression_cv,
            False,
            ("linear",),
        ),
        ("perceptron", "Perceptron", perceptron, True, ("linear", *inc)),
        ("gaussian-nb", "GaussianNB", gaussian_nb, True, inc),
        ("multinomial-nb", "MultinomialNB on min-max scaled features", multinomial_nb, True, inc),
        ("bernoulli-nb", "BernoulliNB on standardised features", bernoulli_nb, True, inc),
        ("mlp", "MLPClassifier, one hidden layer of 128", mlp, True, inc),
        ("nearest-centroid", "NearestCentroid", nearest_centroid, False, ()),
    ]


FAST = (
    "logistic-regression",
    "sgd",
    "passive-aggressive",
    "ridge-1",
    "knn-5",
    "gaussian-nb",
    "nearest-centroid",
    "decision-tree",
)


def all_entries() -> list[Entry]:
    entries = classic_entries() + extra_entries()
    return [
        (n, d, f, inc, (*g, *(("fast",) if n in FAST else ()), "all"))
        for n, d, f, inc, g in entries
    ]


@hookimpl
def register_classifiers(register: Callable[[ClassifierSpec], None]) -> None:
    for name, description, factory, incremental, groups in all_entries():
        register(
            ClassifierSpec(
                name=name,
                description=description,
                factory=factory,
                incremental=incremental,
                library="scikit-learn",
                groups=groups,
            )
        )
