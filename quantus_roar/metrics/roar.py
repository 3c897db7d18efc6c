"""ROAR and KAR: remove (or keep) the most important features, retrain, measure accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, final

import numpy as np
import torch
from quantus.helpers.enums import EvaluationCategory, ScoreDirection

from quantus_roar._validation import Int, Real, validated
from quantus_roar.curves import retrain_curve
from quantus_roar.metrics._base import (
    Call,
    ExecutorName,
    Inputs,
    RemovalMetric,
    Retrainer,
    retrainer_or_default,
)
from quantus_roar.removal import Removal
from quantus_roar.splits import Split, stratified_split

__all__ = ["KAR", "ROAR", "MaskLeakage"]

_DEFAULT_RECIPE = ("TorchRetrainer(model, epochs=12, batch_size=64, optimizer='adam', lr=1e-2, "
                   "schedule='onecycle')")


def check_test_pair(keywords: dict[str, Any], owner: str) -> None:
    """Raise unless ``x_test`` and ``y_test`` are given together or not at all, and
    ``a_test`` only with them."""
    x_test, y_test = keywords.get("x_test"), keywords.get("y_test")
    if (x_test is None) != (y_test is None):
        raise ValueError(f"{owner}.__call__ needs both 'x_test' and 'y_test', or neither (to "
                         "split x_batch). Got only one.")
    if keywords.get("a_test") is not None and x_test is None:
        raise ValueError(f"{owner}.__call__ got 'a_test' without 'x_test' and 'y_test'.")


class _RetrainMetric(RemovalMetric):
    """Shared implementation of ROAR and KAR; see their docstrings."""

    call_keywords = ("x_test", "y_test", "a_test")
    min_classes = 2

    @validated(n_retrains=Int(1), retrainer=Retrainer(), test_size=Real(0, 1, open="both"),
               executor=ExecutorName())
    def __init__(
        self,
        percentages: float | Iterable[float] = (10, 30, 50, 70, 90),
        n_retrains: int = 5,
        retrainer: Any = None,
        removal: Removal | None = None,
        test_size: float = 0.2,
        seed: int = 0,
        target: str = "predicted",
        executor: Any = None,
        **kwargs: Any,
    ):
        super().__init__(percentages, removal=removal, seed=seed, target=target, **kwargs)
        self.n_retrains = n_retrains
        self.retrainer = retrainer
        self.test_size = test_size
        self.executor = executor
        owner = type(self).__name__
        if retrainer is None:
            self._warn(
                f"{owner} got no retrainer, so it will train fresh copies of the model with the "
                f"default recipe {_DEFAULT_RECIPE}, chosen for SmallCNN on the digits. Pass "
                "retrainer=quantus_roar.TorchRetrainer(...) with the recipe that trained your "
                "model: ROAR/KAR results depend on it."
            )
        if self.n_retrains < 3:
            self._warn(f"{owner}(n_retrains={self.n_retrains}) gives no usable spread between "
                       "retrains; Hooker et al. use 5.")

    def _check_keywords(self, keywords: dict[str, Any]) -> None:
        check_test_pair(keywords, type(self).__name__)

    def _splits(self, call: Call, held_out: Inputs | tuple[np.ndarray, np.ndarray],
                a_test: Any) -> tuple[Split, Split]:
        """The training and test split with their attributions (computed when missing):
        ``held_out`` is the checked test set, or the indices of a split of ``x_batch``."""
        cl = call.channel_last
        a = self._attributions(call, call.a_batch, call.x, call.y)
        if isinstance(held_out, Inputs):
            a_te = self._attributions(call, a_test, held_out.x, held_out.y, "a_test")
            return (Split(call.x, call.y, a, None, cl),
                    Split(held_out.x, held_out.y, a_te, None, cl))
        tr, te = held_out
        return (Split(call.x[tr], call.y[tr], a[tr], torch.from_numpy(tr), cl),
                Split(call.x[te], call.y[te], a[te], torch.from_numpy(te), cl))

    def _evaluate(self, call: Call, x_test: Any = None, y_test: Any = None,
                  a_test: Any = None) -> dict | float:
        held_out = (self._more_inputs(call, x_test, y_test, ("x_test", "y_test"))
                    if x_test is not None else
                    stratified_split(call.y, self.test_size, self.seed,
                                     owner=f"{type(self).__name__}.__call__"))
        retrainer = retrainer_or_default(self.retrainer, call)  # checks the model first
        train, test = self._splits(call, held_out, a_test)
        results = retrain_curve(
            retrainer, train, test, self.percentages, removal=self.removal,
            n_retrains=self.n_retrains, executor=self.executor,
            progress=self.display_progressbar,
        )
        curve = results.groupby("percentage", sort=True)["accuracy"].mean().to_dict()
        return self._finish({k: float(v) for k, v in curve.items()}, results)


@final
class ROAR(_RetrainMetric):
    """RemOve And Retrain (Hooker et al., 2019).

    Removes the ``p``% most important features (by the attributions of the
    original model) from the training *and* test data at every percentage,
    trains ``n_retrains`` fresh models per percentage and reports their mean
    test accuracy. The better the attributions, the faster accuracy falls;
    unlike deletion without retraining, the retrained model has seen the
    modified distribution, so a drop means information was removed rather than
    that the inputs look unfamiliar.

    Parameters
    ----------
    percentages : sequence of float, default (10, 30, 50, 70, 90)
        Shares of features removed, each in (0, 100]; 0 (the unmodified data)
        is always evaluated too. Values all at most 1 look like fractions and
        draw a warning.
    n_retrains : int, default 5
        Fresh models per percentage (the same training seeds at every
        percentage).
    retrainer : Retrainer, optional
        Any object with ``fit``/``score`` (e.g.
        :class:`~quantus_roar.TorchRetrainer`); all retrains go to its
        ``fit_score_many`` in one call. Default: ``TorchRetrainer(model)`` with
        its default recipe (12 epochs of Adam, lr 1e-2, one-cycle), with a
        warning: set the recipe deliberately.
    removal : quantus_roar.removal.Removal, optional
        The removal rule: granularity (``"pixel"``: whole pixels, all
        channels; ``"value"``: every channel value), ``reduce`` (how channels
        become one score), and the imputer (``ChannelMean()``, the paper's,
        uses the means of the unmodified training split; ``Zero()``,
        ``ImageMean()``, ``Blur(sigma)``, ``NoisyLinear(noise, tol,
        max_iter)``). Its order must be the metric's and its seed ``seed``.
        Shortcuts in its place: ``granularity=``, ``reduce=``, ``imputer=``
        (a name or an imputer object) and ``imputer_kwargs=``, e.g.
        ``ROAR(imputer="noisy_linear", imputer_kwargs={"noise": 0.0})``.
    test_size : float, default 0.2
        Test share of the stratified split when no ``x_test`` is given.
    seed : int, default 0
        Seeds the split, tie-breaking, imputation noise and training seeds.
    target : {"predicted", "label"}, default "predicted"
        The class ``explain_func`` explains where the metric computes
        attributions (train and test split alike): the model's prediction, as
        the original ROAR code, or the label. Explaining the label lets a test
        image's mask encode its label, so accuracy can *rise* as features are
        removed. Attributions passed in ``a_batch`` are used as they are.
    executor : {None, "local", "processes", "ray"} or quantus_roar.executors.Executor
        Where the retrains run: this process (``None``, ``"local"``); worker
        processes of one torch thread each that keep freed memory
        (``"processes"``, or ``quantus_roar.executors.ProcessExecutor(workers=N)``
        -- the CPU fast path from a plain script); Ray tasks (``"ray"``: one
        task for a model the retrainer can batch, one per retrain otherwise)
        on the cluster ``ray.init`` connected to, or a local one
        (``quantus_roar.executors.RayExecutor(address)`` for a given cluster).
        Every task runs with one torch thread, so the same seeds give the same
        numbers on every executor.
    **kwargs
        Quantus' base arguments (``abs``, ``normalise``, ``normalise_func``,
        ``normalise_func_kwargs``, ``return_aggregate``, ``aggregate_func``,
        ``default_plot_func``, ``disable_warnings``,
        ``display_progressbar``), documented once in
        :class:`~quantus_roar.metrics._base.QuantusRoarMetric`; the
        preprocessing is applied before ranking. With
        ``return_aggregate=True`` a call returns one float, the normalised
        area under the accuracy curve, or ``aggregate_func`` of the mean
        accuracies in increasing order of percentage (the unmodified point
        included) when one is given.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per (percentage, retrain) of the last call: ``accuracy``,
        training ``seed``, ``removed_fraction`` actually applied, timings.

    Notes
    -----
    Called as every Quantus metric (see
    :meth:`~quantus_roar.metrics._base.QuantusRoarMetric.__call__`), with a
    held-out set as three more keywords: ``roar(model, x_batch, y_batch,
    a_batch, x_test=None, y_test=None, a_test=None, explain_func=...)``.
    ``x_batch, y_batch`` are the training set when ``x_test, y_test`` are
    given, else split into train and test (stratified, seeded,
    ``test_size``); missing ``a_batch`` / ``a_test`` are computed with
    ``explain_func`` for the ``target`` classes. ``model`` explains and
    (without a ``retrainer``) is the template of the retrained models; it is
    not modified. Returns ``{percentage: accuracy}``, the mean test accuracy
    over the retrains, with the unmodified data at 0 (% removed, ROAR) or
    at 100 (% kept, KAR).

    References
    ----------
    .. [1] Hooker, Erhan, Kindermans and Kim, "A Benchmark for
       Interpretability Methods in Deep Neural Networks", NeurIPS 2019.

    Examples
    --------
    >>> retrainer = quantus_roar.TorchRetrainer(quantus_roar.SmallCNN(), epochs=12)
    >>> roar = quantus_roar.ROAR(percentages=(50, 90), n_retrains=3, retrainer=retrainer)
    >>> roar.removal
    Removal(order='remove_top', granularity='pixel', reduce='sum_abs',
            imputer=ChannelMean(), seed=0)
    >>> roar(model, x, y, a)                               # doctest: +SKIP
    {0: 0.97, 50: 0.71, 90: 0.35}
    """

    name = "Remove And Retrain (ROAR)"
    interpretation = (
        "Lower is better: the faster test accuracy falls when the top-ranked features are "
        "removed and a fresh model is trained, the more of what the task needs the ranking "
        "put first (compare with Random and the mask-leakage figure)")
    score_direction = ScoreDirection.LOWER
    order = "remove_top"


@final
class KAR(_RetrainMetric):
    """Keep And Retrain (Hooker et al., 2019).

    Keeps only the ``p``% most important features, replaces the rest, and
    retrains; otherwise identical to :class:`ROAR` (same parameters). The
    results are keyed by the share *kept*, so the unmodified data is the
    point at 100, and the area under the curve spans the kept shares. The
    better the attributions, the higher the accuracy stays when little is
    kept.

    References
    ----------
    .. [1] Hooker, Erhan, Kindermans and Kim, "A Benchmark for
       Interpretability Methods in Deep Neural Networks", NeurIPS 2019.
    """

    name = "Keep And Retrain (KAR)"
    interpretation = (
        "Higher is better: the more test accuracy a fresh model trained on only the "
        "top-ranked features keeps, the more of what the task needs the ranking put first")
    score_direction = ScoreDirection.HIGHER
    order = "keep_top"



@final
class MaskLeakage(_RetrainMetric):
    """How much the removal masks alone tell about the class (Rong et al., 2022).

    Trains fresh models, as :class:`ROAR` does, on the *masks* of the ROAR
    removal instead of the modified images: every input is 1 where ROAR
    removes a feature and 0 elsewhere, train and test alike, with the same
    ranking, ties, counts, split, seeds and retrainer. If these models
    predict the class well above chance, ROAR's accuracy drop at that
    percentage partly measures what the *shape* of the mask gives away (a
    digit's outline, an object's silhouette), not only the information
    removed: a ranking can look good or bad in ROAR through its masks.
    Report it beside ROAR and KAR, with the controls whose masks carry no
    class information (``BlurredRandom``, :class:`~quantus_roar.explainers.FixedPrior`).

    Parameters
    ----------
    percentages, n_retrains, retrainer, test_size, seed, target, executor
        As :class:`ROAR`.
    removal : quantus_roar.removal.Removal, optional
        The ROAR rule whose masks are measured (granularity, reduce, seed;
        its imputer is not used, and the order is ``"remove_top"``).
        The ``granularity`` and ``reduce`` shortcuts work as for ROAR.
    **kwargs
        Quantus' base arguments, as :class:`ROAR`.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per (percentage, retrain), as :class:`ROAR`, and ``chance``:
        the test accuracy of always predicting the most frequent training
        class. The row at 0 % (all-zero masks) is the chance the retrained
        models themselves reach without any information.
    chance : float
        That accuracy, for the last call.

    Notes
    -----
    Called as :class:`ROAR`; returns ``{percentage: mask-only accuracy}``.

    References
    ----------
    .. [1] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022, Sec. 4 (class information leaking
       through the removal masks).
    .. [2] Hooker, Erhan, Kindermans and Kim, "A Benchmark for
       Interpretability Methods in Deep Neural Networks", NeurIPS 2019.
    """

    name = "Mask Leakage"
    interpretation = (
        "Lower is better: the test accuracy of models trained on the removal masks alone; "
        "above chance, the ROAR drop at that percentage partly measures what the shape of "
        "the mask gives away")
    score_direction = ScoreDirection.LOWER
    evaluation_category = EvaluationCategory.NONE
    order = "remove_top"

    takes_imputer = False
    chance = float("nan")

    def _adapted(self, removal: Removal) -> Removal:
        """The rule that makes the inputs the masks: a fill of 1 on all-zero inputs."""
        return removal.mask_only()

    def _splits(self, call: Call, held_out: Inputs | tuple[np.ndarray, np.ndarray],
                a_test: Any) -> tuple[Split, Split]:
        train, test = super()._splits(call, held_out, a_test)
        counts = torch.bincount(train.y)
        self.chance = float((test.y == int(counts.argmax())).double().mean())
        return (train._replace(x=torch.zeros_like(train.x)),
                test._replace(x=torch.zeros_like(test.x)))

    def _finish(self, curve: dict, results: Any) -> Any:
        return super()._finish(curve, results.assign(chance=self.chance))
