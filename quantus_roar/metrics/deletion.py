"""No-retrain deletion: the ROAR / KAR removal scored with the original model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, final

import torch
from quantus.helpers.enums import ScoreDirection

from quantus_roar._validation import check_batch_size
from quantus_roar.curves import deletion_curve
from quantus_roar.metrics._base import (
    RemovalMetric,
    check_call_kwargs,
    check_inputs,
    compute_attributions,
)
from quantus_roar.splits import Split

__all__ = ["KARNoRetrain", "ROARNoRetrain"]


class _DeletionMetric(RemovalMetric):
    """Shared implementation of ROARNoRetrain and KARNoRetrain; see their docstrings."""

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
        softmax: bool | None = True,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> dict | float:
        """Accuracy of ``model`` on ``x_batch`` with features removed, per percentage.

        Parameters
        ----------
        model : torch.nn.Module
            The trained model; not modified (its train/eval mode is restored).
        x_batch, y_batch, a_batch
            Inputs, integer labels and attributions (computed with
            ``explain_func`` in batches of ``batch_size`` when missing).
        channel_first : bool, optional
            Layout of image / time-series inputs; inferred when None.
        softmax : bool, default True
            ``results["true_class_score"]`` is the softmax probability of the
            true class; with False the raw output (for models ending in a
            softmax).
        device : str or torch.device, optional
            Where ``explain_func`` computes missing attributions (added to
            its kwargs unless they name one); the deletion itself runs on the
            model's device.
        batch_size : int, default 64
            Samples modified and scored together (times the number of
            percentages per forward pass).
        s_batch, model_predict_kwargs
            Accepted for Quantus compatibility; not used.

        Returns
        -------
        dict or float
            ``{percentage: acc}`` with the unmodified data at 0 (% removed,
            ROARNoRetrain) or 100 (% kept, KARNoRetrain), or the normalised
            area under it with ``return_aggregate=True``.
        """
        owner = type(self).__name__
        check_call_kwargs(kwargs)
        check_batch_size(batch_size, f"{owner}.__call__")
        inputs = check_inputs(model, x_batch, y_batch, owner, channel_first=channel_first,
                              device=device)
        if a_batch is None:
            a_batch = compute_attributions(model, inputs.x, inputs.y, explain_func,
                                           explain_func_kwargs, batch_size, owner,
                                           progress=self.display_progressbar,
                                           target=self.target, device=device)
        a = self._prepare_attributions(a_batch, inputs.x, "a_batch", inputs.channel_last)
        results = deletion_curve(
            model, Split(inputs.x, inputs.y, a, channel_last=inputs.channel_last),
            self.percentages, removal=self.removal, batch_size=batch_size,
            softmax=softmax is not False, progress=self.display_progressbar,
        )
        curve = dict(zip(results["percentage"], results["accuracy"].astype(float), strict=True))
        return self._finish(curve, results)


@final
class ROARNoRetrain(_DeletionMetric):
    """Deletion of the most important features without retraining (MoRF).

    The removal of :class:`~quantus_roar.ROAR` -- same ranking, ties, count
    and imputation -- applied to ``x_batch`` and scored with the original
    model. Cheap (no training), but confounded: the model never saw inputs
    with features replaced, so accuracy also falls because the modified inputs
    are out of distribution, whatever the attributions. Report it beside ROAR
    to show that gap. Lower accuracy means a better ranking.

    Parameters
    ----------
    percentages, removal, seed, target
        As :class:`~quantus_roar.ROAR` (with the same ``granularity``,
        ``reduce``, ``imputer`` and ``imputer_kwargs`` shortcuts).
        ``"channel_mean"`` uses the means of ``x_batch`` itself.
    abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
    aggregate_func, default_plot_func, disable_warnings, display_progressbar
        As :class:`~quantus_roar.ROAR`.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per percentage (increasing): ``accuracy``, ``true_class_score``
        (mean softmax probability of the true class), ``removed_fraction``.

    References
    ----------
    .. [1] Samek et al., "Evaluating the Visualization of What a Deep Neural
       Network Has Learned", IEEE TNNLS 2017 (MoRF deletion).
    .. [2] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022 (ROAD, noisy linear imputation).
    .. [3] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019 (why to retrain).
    """

    name = "ROARNoRetrain"
    score_direction = ScoreDirection.LOWER
    order = "remove_top"


@final
class KARNoRetrain(_DeletionMetric):
    """Keep only the most important features, without retraining (LeRF).

    The removal of :class:`~quantus_roar.KAR` scored with the original model;
    see :class:`ROARNoRetrain` for parameters, results and caveats. Higher
    accuracy means a better ranking.

    References
    ----------
    .. [1] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022.
    .. [2] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019.
    """

    name = "KARNoRetrain"
    score_direction = ScoreDirection.HIGHER
    order = "keep_top"
