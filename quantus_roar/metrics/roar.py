"""ROAR and KAR: remove (or keep) the most important features, retrain, measure accuracy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, final

import numpy as np
import torch
from quantus.helpers.enums import ScoreDirection

from quantus_roar._validation import check_batch_size
from quantus_roar.curves import retrain_curve
from quantus_roar.metrics._base import (
    RemovalMetric,
    check_call_kwargs,
    check_executor,
    check_inputs,
    check_retrainer,
    check_test_pair,
    compute_attributions,
    retrainer_or_default,
)
from quantus_roar.removal import Removal
from quantus_roar.splits import Split, stratified_split

__all__ = ["KAR", "ROAR"]

_DEFAULT_RECIPE = ("TorchRetrainer(model, epochs=12, batch_size=64, optimizer='adam', lr=1e-2, "
                   "schedule='onecycle')")


class _RetrainMetric(RemovalMetric):
    """Shared implementation of ROAR and KAR; see their docstrings."""

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
        abs: bool = False,
        normalise: bool = False,
        normalise_func: Callable | None = None,
        normalise_func_kwargs: dict | None = None,
        return_aggregate: bool = False,
        aggregate_func: Callable | None = None,
        default_plot_func: Callable | None = None,
        disable_warnings: bool = False,
        display_progressbar: bool = False,
        **kwargs: Any,
    ):
        owner = type(self).__name__
        if not isinstance(n_retrains, (int, np.integer)) or n_retrains < 1:
            raise ValueError(f"The 'n_retrains' parameter of {owner} must be a positive integer. "
                             f"Got {n_retrains!r} instead.")
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"The 'test_size' parameter of {owner} must be in (0, 1). Got "
                             f"{test_size!r} instead.")
        check_retrainer(retrainer, owner)
        super().__init__(
            percentages, removal=removal, seed=seed, target=target, abs=abs,
            normalise=normalise,
            normalise_func=normalise_func, normalise_func_kwargs=normalise_func_kwargs,
            return_aggregate=return_aggregate, aggregate_func=aggregate_func,
            default_plot_func=default_plot_func, disable_warnings=disable_warnings,
            display_progressbar=display_progressbar, **kwargs,
        )
        self.n_retrains = int(n_retrains)
        self.retrainer = retrainer
        self.test_size = float(test_size)
        self.executor = check_executor(executor, owner)
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

    def __call__(
        self,
        model: torch.nn.Module,
        x_batch: Any,
        y_batch: Any,
        a_batch: Any = None,
        s_batch: Any = None,
        channel_first: bool | None = None,
        explain_func: Callable | None = None,
        explain_func_kwargs: dict | None = None,
        model_predict_kwargs: dict | None = None,
        softmax: bool | None = False,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        x_test: Any = None,
        y_test: Any = None,
        a_test: Any = None,
        **kwargs: Any,
    ) -> dict | float:
        """Retrain on the modified data and return the test accuracy per percentage.

        Parameters
        ----------
        model : torch.nn.Module
            The trained model whose explanations are evaluated; it explains
            missing attributions and (without a ``retrainer``) is the template
            of the retrained models. It is not modified.
        x_batch, y_batch : array-like
            Inputs and integer labels: the training set when ``x_test`` is
            given, else split into train and test (stratified, seeded,
            ``test_size``).
        a_batch : array-like, optional
            Attributions of ``x_batch`` (shape of ``x_batch``, one channel, or
            no channel axis). Computed with ``explain_func`` when missing.
        s_batch, model_predict_kwargs, softmax
            Accepted for Quantus compatibility; not used.
        channel_first : bool, optional
            Layout of image / time-series inputs; inferred when None.
        explain_func, explain_func_kwargs
            Quantus explain function, called as ``explain_func(model=model,
            inputs=x, targets=y, **explain_func_kwargs)`` in batches of
            ``batch_size`` for missing ``a_batch`` / ``a_test``.
        device : str or torch.device, optional
            Device for the explanations and the default retrainer.
        batch_size : int, default 64
            Batch size of the explanation calls.
        x_test, y_test, a_test : array-like, optional
            A separate test set and its attributions.

        Returns
        -------
        dict or float
            ``{percentage: acc}``: mean test accuracy over the retrains per
            percentage, with the unmodified data at 0 (% removed, ROAR) or
            at 100 (% kept, KAR); with
            ``return_aggregate=True`` the normalised area under that curve
            (see :func:`quantus_roar.curves.normalised_auc`), or
            ``aggregate_func`` of the accuracies when one was given.
        """
        owner = type(self).__name__
        check_call_kwargs(kwargs)
        progress = self.display_progressbar
        check_batch_size(batch_size, f"{owner}.__call__")
        check_test_pair(x_test, y_test, owner)
        inputs = check_inputs(model, x_batch, y_batch, owner, channel_first=channel_first,
                              device=device, min_classes=2)
        if a_test is not None and x_test is None:
            raise ValueError(f"{owner}.__call__ got 'a_test' without 'x_test' and 'y_test'.")
        if x_test is None:
            tr, te = stratified_split(inputs.y, self.test_size, self.seed,
                                      owner=f"{owner}.__call__")
            test = None
        else:
            test = check_inputs(model, x_test, y_test, owner, channel_first=channel_first,
                                device=device, x_name="x_test", y_name="y_test",
                                sample_shape=tuple(inputs.x.shape[1:]))
        retrainer = retrainer_or_default(self.retrainer, model, device)

        if a_batch is None:
            a_batch = compute_attributions(model, inputs.x, inputs.y, explain_func,
                                           explain_func_kwargs, batch_size, owner,
                                           progress=progress, target=self.target,
                                           device=device)
        a = self._prepare_attributions(a_batch, inputs.x, "a_batch", inputs.channel_last)
        if test is None:
            x_tr, y_tr, a_tr = inputs.x[tr], inputs.y[tr], a[tr]
            x_te, y_te, a_te = inputs.x[te], inputs.y[te], a[te]
            train_ids, test_ids = torch.from_numpy(tr), torch.from_numpy(te)
        else:
            if a_test is None:
                a_test = compute_attributions(model, test.x, test.y, explain_func,
                                              explain_func_kwargs, batch_size, owner,
                                              what="a_test", progress=progress,
                                              target=self.target, device=device)
            a_te = self._prepare_attributions(a_test, test.x, "a_test", test.channel_last)
            x_tr, y_tr, a_tr = inputs.x, inputs.y, a
            x_te, y_te = test.x, test.y
            train_ids, test_ids = None, None
        cl = inputs.channel_last
        results = retrain_curve(
            retrainer, Split(x_tr, y_tr, a_tr, train_ids, cl),
            Split(x_te, y_te, a_te, test_ids, cl), self.percentages, removal=self.removal,
            n_retrains=self.n_retrains, executor=self.executor, progress=progress,
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
    executor : {None, "local", "ray"} or quantus_roar.executors.Executor
        Where the retrains run. ``"ray"`` sends them as Ray tasks (one task
        for a model the retrainer can batch, one per retrain otherwise) to the
        cluster ``ray.init`` connected to, or to a local one; pass
        ``quantus_roar.executors.RayExecutor(address)`` for a given cluster.
        The same seeds give the same numbers on every executor.
    abs, normalise, normalise_func, normalise_func_kwargs
        Quantus' attribution preprocessing (applied before ranking).
    return_aggregate : bool, default False
        Return one float, the normalised area under the accuracy curve.
    aggregate_func : callable, optional
        Replaces that area: called with the mean accuracies in increasing
        order of percentage (the unmodified point included).
    default_plot_func, disable_warnings, display_progressbar
        As in every Quantus metric.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per (percentage, retrain) of the last call: ``accuracy``,
        training ``seed``, ``removed_fraction`` actually applied, timings.

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

    name = "ROAR"
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

    name = "KAR"
    score_direction = ScoreDirection.HIGHER
    order = "keep_top"

