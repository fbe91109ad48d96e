"""Built-in scikit-learn classifiers on feature vectors.

Groups:

* ``classic``: the 40 configurations of the classic spot-check recipe (logistic regression, SGD,
  passive-aggressive, decision tree, extra tree, five 100-estimator ensembles, k-NN with k = 3..24,
  LinearSVC and RidgeClassifier with C/alpha in {0.001, 0.01, 1, 10});
* ``recommended`` (the default of ``transferkit spotcheck``): what works on pretrained features:
  standardised logistic regression with a cross-validated C, standardised LinearSVC, an RBF SVC,
  k-NN on L2-normalised features (cosine neighbours), ridge on standardised features with a
  cross-validated alpha, histogram gradient boosting and a small MLP with early stopping;
* ``fast``: a handful that fit in seconds on a few thousand 1,280-d rows (the demo's grid),
  standardised where the model needs it (linear models, k-NN, nearest centroid);
* ``linear``: the linear models;
* ``incremental``: models that learn batch by batch with ``partial_fit`` (``transferkit stream``);
* ``all``: every classifier of this plugin.

``softmax`` is transferkit's own multinomial logistic regression in NumPy, standardised from
running statistics and trained by averaged mini-batch SGD (``transferkit.plugins._softmax``): the
default and fastest incremental learner of ``transferkit stream``.

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

import functools
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


def standard_logreg_cv(
    Cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0), cv: int = 3, max_iter: int = 500
) -> Any:
    """StandardScaler | LogisticRegression with C chosen by ``cv``-fold cross-validation over
    ``Cs`` (a grid search, refitted on all rows, in one process: a spot-check runs many fits side
    by side), rather than ``LogisticRegressionCV``, whose regularisation path is slower on a
    thousand standardised dimensions for the same choice (``bench/RESULTS.md``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(
        LogisticRegression(max_iter=max_iter), {"C": list(Cs)}, cv=cv, error_score="raise"
    )
    return _scaled(search)


def standard_linear_svc(C: float = 0.01) -> Any:
    """StandardScaler | LinearSVC solved in the dual; a small C suits hundreds of standardised
    dimensions (the dual is the faster solver on 1,280-d features: ``bench/RESULTS.md``)."""
    from sklearn.svm import LinearSVC

    return _scaled(LinearSVC(C=C, dual=True, max_iter=5000))


def svc_rbf(C: float = 10.0) -> Any:
    from sklearn.svm import SVC

    return _scaled(SVC(C=C, kernel="rbf", gamma="scale"))


def knn_cosine(n_neighbors: int = 10) -> Any:
    """k-NN on L2-normalised rows (Euclidean neighbours there are the cosine neighbours),
    votes weighted by distance."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer

    return Pipeline(
        [
            ("normalize", Normalizer()),
            ("model", KNeighborsClassifier(n_neighbors=n_neighbors, weights="distance")),
        ]
    )


def ridge_cv() -> Any:
    """StandardScaler | RidgeClassifierCV (alpha by efficient leave-one-out, 0.1..10,000)."""
    import numpy as np
    from sklearn.linear_model import RidgeClassifierCV

    return _scaled(RidgeClassifierCV(alphas=np.logspace(-1, 4, 6)))


def hist_gradient_boosting(max_iter: int = 100) -> Any:
    """HistGradientBoostingClassifier, early stopping on a 10 % validation split."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=max_iter, early_stopping=True, validation_fraction=0.1, n_iter_no_change=5
    )


def small_mlp(hidden: int = 256, alpha: float = 1e-3) -> Any:
    """StandardScaler | MLPClassifier, one hidden layer, early stopping on 10 % of the rows."""
    from sklearn.neural_network import MLPClassifier

    return _scaled(
        MLPClassifier(
            hidden_layer_sizes=(hidden,),
            alpha=alpha,
            early_stopping=True,
            validation_fraction=0.1,
            n_iter_no_change=10,
            max_iter=200,
        )
    )


def softmax(
    learning_rate: float = 2.0,
    alpha: float = 1e-4,
    batch_size: int = 32,
    averaging: float = 3.0,
    echo: int = 4,
) -> Any:
    """transferkit's SoftmaxRegression: running standardisation, averaged SGD, in NumPy;
    ``echo`` passes over each batch it is given (data echoing)."""
    from transferkit.plugins._softmax import SoftmaxRegression

    return SoftmaxRegression(
        learning_rate=learning_rate,
        alpha=alpha,
        batch_size=batch_size,
        averaging=averaging,
        echo=echo,
    )


def _bind(factory: Callable[..., Any], **params: Any) -> Callable[..., Any]:
    """``factory`` with default ``params``; call-time parameters override them. A
    ``functools.partial`` of a module-level function, so that it pickles (the spot-check hands
    factories to its workers)."""
    return functools.partial(factory, **params)


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
    linear = (
        ("linear-svc", "LinearSVC", linear_svc, "C"),
        ("ridge", "RidgeClassifier", ridge, "alpha"),
    )
    for name, model, build, param in linear:
        for value in CLASSIC_C:
            label = f"{param}={_fmt(value)}"
            entries.append(
                (
                    f"{name}-{_fmt(value)}",
                    f"{model}, {label}",
                    _bind(build, **{param: value}),
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
        (
            "softmax",
            "multinomial logistic regression, averaged SGD in NumPy (running standardisation)",
            softmax,
            True,
            ("linear", *inc),
        ),
    ]


def recommended_entries() -> list[Entry]:
    """What works on pretrained features (the ``recommended`` group, spot-check's default)."""
    rec = ("recommended",)
    return [
        (
            "logreg-cv-std",
            "standardised LogisticRegression, C in 0.001..1 by 3-fold cross-validation",
            standard_logreg_cv,
            False,
            ("linear", *rec),
        ),
        (
            "linear-svc-std",
            "standardised LinearSVC, C=0.01",
            standard_linear_svc,
            False,
            ("linear", *rec),
        ),
        ("svc-rbf", "standardised SVC, RBF kernel, C=10", svc_rbf, False, rec),
        (
            "knn-cosine",
            "KNeighborsClassifier on L2-normalised features (cosine), k=10, distance-weighted",
            knn_cosine,
            False,
            rec,
        ),
        (
            "ridge-cv-std",
            "standardised RidgeClassifierCV (alpha in 0.1..1e4, leave-one-out)",
            ridge_cv,
            False,
            ("linear", *rec),
        ),
        (
            "hist-gradient-boosting",
            "HistGradientBoostingClassifier, early stopping",
            hist_gradient_boosting,
            False,
            rec,
        ),
        (
            "mlp-small",
            "standardised MLPClassifier, 256 hidden units, early stopping",
            small_mlp,
            False,
            rec,
        ),
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
    entries = classic_entries() + extra_entries() + recommended_entries()
    return [
        (n, d, f, inc, (*g, *(("fast",) if n in FAST else ()), "all"))
        for n, d, f, inc, g in entries
    ]


# Relative fit times on a few thousand pretrained feature vectors (the spot-check hands out the
# costliest pairs first): ensembles, kernel and cross-validated models and liblinear's weakly
# regularised SVCs dominate; k-NN, naive Bayes and nearest centroid barely fit at all.
COSTS = (
    (("random-forest", "extra-trees", "bagging", "gradient-boosting", "adaboost"), 8.0),
    (("hist-gradient-boosting", "svc-rbf", "logreg-cv", "logreg-cv-std", "ridge-cv-std"), 8.0),
    (("mlp", "mlp-small"), 8.0),
    (("linear-svc-",), 8.0),
    (("sgd", "passive-aggressive", "perceptron"), 4.0),
    (("logistic-regression", "decision-tree", "extra-tree"), 2.0),
    (("ridge-",), 1.0),
    (("knn-", "gaussian-nb", "bernoulli-nb", "multinomial-nb", "nearest-centroid"), 0.5),
)


def cost_hint(name: str) -> float:
    """The ``cost`` metadata of a classifier: the first entry of :data:`COSTS` that names it
    (exactly, or as a prefix ending in ``-``); 1 otherwise."""
    for names, cost in COSTS:
        if any(name == n or (n.endswith("-") and name.startswith(n)) for n in names):
            return cost
    return 1.0


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
                metadata={"cost": cost_hint(name)},
            )
        )
