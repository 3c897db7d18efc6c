"""No-retrain deletion: the ROAR / KAR removal scored with the original model."""

from __future__ import annotations

from typing import Any, final

from quantus.helpers.enums import ScoreDirection

from quantus_roar.curves import deletion_curve
from quantus_roar.metrics._base import Call, RemovalMetric
from quantus_roar.splits import Split

__all__ = ["KARNoRetrain", "ROARNoRetrain"]


class _DeletionMetric(RemovalMetric):
    """Shared implementation of ROARNoRetrain and KARNoRetrain; see their docstrings."""

    default_softmax = True

    def _evaluate(self, call: Call, **keywords: Any) -> dict | float:
        a = self._attributions(call, call.a_batch, call.x, call.y)
        results = deletion_curve(
            call.model, Split(call.x, call.y, a, channel_last=call.channel_last),
            self.percentages, removal=self.removal, batch_size=call.batch_size,
            softmax=call.softmax is not False, progress=self.display_progressbar,
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
    **kwargs
        Quantus' base arguments, as :class:`~quantus_roar.ROAR`.

    Attributes
    ----------
    results : pandas.DataFrame
        One row per percentage (increasing): ``accuracy``, ``true_class_score``
        (mean softmax probability of the true class), ``removed_fraction``.

    Notes
    -----
    Called as every Quantus metric (:meth:`QuantusRoarMetric.__call__
    <quantus_roar.metrics._base.QuantusRoarMetric.__call__>`): ``metric(model,
    x_batch, y_batch, a_batch, batch_size=64, softmax=True)`` returns
    ``{percentage: accuracy}`` of ``model`` on ``x_batch`` with the features
    removed, the unmodified data at 0 (% removed, ROARNoRetrain) or 100 (%
    kept, KARNoRetrain), or the normalised area under it with
    ``return_aggregate=True``. ``batch_size`` samples are modified and
    scored together (times the number of percentages per forward pass).
    ``softmax=False`` makes ``true_class_score`` the raw output (for models
    ending in a softmax).

    References
    ----------
    .. [1] Samek et al., "Evaluating the Visualization of What a Deep Neural
       Network Has Learned", IEEE TNNLS 2017 (MoRF deletion).
    .. [2] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022 (ROAD, noisy linear imputation).
    .. [3] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019 (why to retrain).
    """

    name = "Remove without Retraining (MoRF)"
    interpretation = (
        "Lower is better: the faster the explained model's accuracy falls when the "
        "top-ranked features are removed, the more the ranking found what this model uses "
        "(part of the fall can be its reaction to the fill, which retraining would remove)")
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
    .. [1] Samek et al., "Evaluating the Visualization of What a Deep Neural
       Network Has Learned", IEEE TNNLS 2017 (LeRF, least relevant first).
    .. [2] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022.
    .. [3] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019.
    """

    name = "Keep without Retraining (LeRF)"
    interpretation = (
        "Higher is better: the more accuracy the explained model keeps on only the "
        "top-ranked features, the more the ranking found what this model uses")
    score_direction = ScoreDirection.HIGHER
    order = "keep_top"
