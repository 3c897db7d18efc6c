"""The sanity checks of Adebayo et al.: model (parameter) and data (label) randomisation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, final

import numpy as np
import pandas as pd
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ScoreDirection
from tqdm.auto import tqdm

from quantus_roar._validation import Choice, Int, Real, check_choice, validated
from quantus_roar.executors import (
    LocalExecutor,
    ProcessExecutor,
    check_picklable,
    get_executor,
)
from quantus_roar.metrics._base import (
    Call,
    ExecutorName,
    QuantusRoarMetric,
    Retrainer,
    retrainer_or_default,
)
from quantus_roar.metrics.roar import check_test_pair
from quantus_roar.randomisation import LAYER_ORDERS, execution_order
from quantus_roar.retrain.base import fit_task
from quantus_roar.sanity import (
    Explain,
    SanitySeeds,
    data_randomisation,
    model_randomisation,
    permuted_labels,
)
from quantus_roar.similarity import SIMILARITIES
from quantus_roar.splits import stratified_split
from quantus_roar.tasks import task_resources

__all__ = ["DataRandomisation", "ModelRandomisation"]


#: Default similarities by data layout: SSIM and HOG need image maps.
IMAGE_SIMILARITIES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
OTHER_SIMILARITIES: tuple[str, ...] = ("spearman_abs", "spearman")


def _similarity_names(similarity: str | Sequence[str] | None, owner: str
                      ) -> tuple[str, ...] | None:
    if similarity is None:  # chosen per call from the data layout
        return None
    names = (similarity,) if isinstance(similarity, str) else tuple(similarity)
    if not names:
        raise ValueError(f"The 'similarity' parameter of {owner} must name at least one of "
                         f"{list(SIMILARITIES)}. Got none.")
    for name in names:
        check_choice(name, "similarity", owner, tuple(SIMILARITIES))
    return names


class _RandomisationMetric(QuantusRoarMetric):
    """Shared machinery: explain with a model, keep each comparison with the original."""

    data_applicability: ClassVar[set[DataType]] = {
        DataType.IMAGE, DataType.TABULAR, DataType.TIMESERIES}
    evaluation_category: ClassVar[EvaluationCategory] = EvaluationCategory.RANDOMISATION
    score_direction: ClassVar[ScoreDirection] = ScoreDirection.LOWER

    @validated(retrainer=Retrainer())
    def __init__(self, similarity: str | Sequence[str] | None, retrainer: Any, seed: int,
                 **base: Any):
        self.similarity = _similarity_names(similarity, type(self).__name__)
        self.retrainer = retrainer
        super().__init__(seed=seed, **base)
        self.scores: dict[str, dict[str, np.ndarray]] = {}
        self._similarities: tuple[str, ...] = self.similarity or IMAGE_SIMILARITIES

    def _choose_similarities(self, x: torch.Tensor, channel_last: bool) -> None:
        """The similarities of this call: those given, else by layout (SSIM and HOG for
        image maps only), with a clear error for image similarities on other data."""
        image = x.ndim == 4 and min(x.shape[1:3] if channel_last else x.shape[2:]) > 1
        if self.similarity is None:
            self._similarities = IMAGE_SIMILARITIES if image else OTHER_SIMILARITIES
            return
        bad = [s for s in self.similarity if s not in OTHER_SIMILARITIES]
        if bad and not image:
            raise ValueError(f"The 'similarity' parameter of {type(self).__name__} names "
                             f"{bad}, which compare images, but the inputs have shape "
                             f"{tuple(x.shape)}. Use {list(OTHER_SIMILARITIES)}, or "
                             "similarity=None to choose by the data layout.")
        self._similarities = self.similarity

    def _explainer(self, call: Call, x: torch.Tensor, targets: torch.Tensor, a: Any,
                   what: dict[str, str]) -> Explain:
        """The sanity core's ``explain(model, step)``: ``a`` (checked) or the explanations
        of the original model for ``"original"``, then those of each compared model,
        which must have the original's shape."""
        original: list[torch.Tensor] = []  # computed once, however often asked for

        def explain(model: torch.nn.Module, step: str) -> torch.Tensor:
            name = what.get(step, f"model with layer '{step}' randomised")
            if step == "original" and original:
                return original[0]
            if step == "original" and a is not None:
                out = self._prepare_attributions(a, x, what["a"], call.channel_last)
            else:
                out = self._prepare_attributions(self._explained(call, model, x, targets, name),
                                                 x, name, call.channel_last)
            if step == "original":
                original.append(out)
            elif out.shape != original[0].shape:
                raise ValueError(f"The explanations of the {name} have shape "
                                 f"{tuple(out.shape)}, but the original ones ({what['a']}) have "
                                 f"shape {tuple(original[0].shape)}. Pass {what['a']} computed "
                                 "with the same explain_func, or leave it out.")
            return out

        return explain

    def _keep(self, comparisons: Any, **info: Any) -> list[str]:
        """Store every comparison (``scores``, ``results``); return the steps in order."""
        self.scores, rows, steps = {}, [], []
        for c in comparisons:
            for name, values in c.similarities.items():
                self.scores.setdefault(name, {})[c.step] = values
                rows.extend({"similarity": name, "step": c.step, "sample": i,
                             "value": float(v), "time_s": c.time_s,
                             **{k: f(c) for k, f in info.items()}}
                            for i, v in enumerate(values))
            steps.append(c.step)
        self.results = pd.DataFrame(rows)
        return steps

    def _summary(self, steps: Sequence[str]) -> Any:
        with warnings.catch_warnings():  # all-NaN steps: compare() has warned already
            warnings.simplefilter("ignore", RuntimeWarning)
            means = {name: {step: float(np.nanmean(self.scores[name][step])) for step in steps}
                     for name in self._similarities}
        if self.return_aggregate:
            agg = self.aggregate_func
            reduced = {name: float(agg(np.asarray(list(per.values()))))
                       for name, per in means.items()}
            one = len(self._similarities) == 1
            out: Any = reduced[self._similarities[0]] if one else reduced
        else:
            out = means[self._similarities[0]] if len(self._similarities) == 1 else means
        self.evaluation_scores = out
        self.all_evaluation_scores.append(out)
        return out

    def _require_explain_func(self, call: Call) -> None:
        if call.explain_func is None:
            raise ValueError(f"{type(self).__name__} recomputes explanations of changed models "
                             "and needs an 'explain_func' (for example "
                             "explain_func=quantus_roar.explain, explain_func_kwargs={'method': "
                             "'Gradient'}).")
        if not callable(call.explain_func):
            raise TypeError(f"The 'explain_func' parameter of {type(self).__name__} must be "
                            f"callable. Got {type(call.explain_func).__name__} instead.")


@final
class ModelRandomisation(_RandomisationMetric):
    """Model parameter randomisation test (Adebayo et al., 2018), done right.

    Re-initialises the model's layers step by step and measures, per sample,
    how similar the explanation of the changed model is to the original one.
    An explanation that stays similar while the weights that produced the
    prediction are destroyed does not depend on the model -- it behaves like
    an edge detector. Lower similarity passes the test.

    Compared with ``quantus.MPRT``: layers are ordered by forward execution
    (hooks on one forward pass), not by definition order; re-initialisation
    never touches the global random state; the original model's trivial
    self-similarity is not mixed into any average; and every step is
    explained in large batches with any explain_func.

    Parameters
    ----------
    layer_order : {"top_down", "bottom_up", "independent"}, default "top_down"
        Cascading from the logits down (the paper's main test), cascading
        from the input up, or one layer at a time with the others trained.
    similarity : str or sequence of str, optional
        Any of :data:`quantus_roar.similarity.SIMILARITIES`. Default: chosen
        from the data layout, ``("spearman_abs", "spearman", "ssim", "hog")``
        for images and ``("spearman_abs", "spearman")`` for tabular data and
        time series (SSIM and HOG compare images).
    retrainer : Retrainer, optional
        When given, a model trained with another seed on ``x_train, y_train``
        (default ``x_batch, y_batch``) gives the ``"ceiling"`` reference.
    target : {"predicted", "label"}, default "predicted"
        The class explained, the same for every model compared: the original
        model's prediction (as the removal metrics), or the label ``y_batch``.
    seed : int, default 0
        Every seed of the check derives from it
        (:class:`quantus_roar.sanity.SanitySeeds`, as the runner's first
        repeat): each layer is reset under a forked RNG seeded with
        ``SanitySeeds.derive(seed).layers`` (``quantus.MPRT(seed=L - 1)``
        draws the same weights as layer seed ``L``); the floor model and the
        ceiling's training have their own derived seeds.
    **kwargs
        Quantus' base arguments (:class:`~quantus_roar.metrics._base.QuantusRoarMetric`);
        the preprocessing applies to every explanation, and
        ``return_aggregate=True`` returns ``aggregate_func`` (default
        ``np.mean``) of the per-step means.

    Attributes
    ----------
    scores : dict
        ``{similarity: {step: per-sample array}}``.
    results : pandas.DataFrame
        One row per (similarity, step, sample).
    layers : list of str
        The layers in execution order found in the last call.

    Notes
    -----
    Called as every Quantus metric (see
    :meth:`~quantus_roar.metrics._base.QuantusRoarMetric.__call__`);
    ``explain_func`` is required (every step is explained again), and
    ``x_train, y_train`` (default ``x_batch, y_batch``) train the ceiling
    model. ``a_batch``, when given, are the original model's explanations
    and must match its output shape. Returns ``{step: mean similarity}`` for
    each layer in the order randomised, then ``"floor"`` (every layer
    fresh) and, with a retrainer, ``"ceiling"``; nested ``{similarity:
    {...}}`` for several similarities. The steps are computed by
    :func:`quantus_roar.sanity.model_randomisation`, as in the runner.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    .. [2] Binder et al., "Shortcomings of Top-Down Randomization-Based Sanity
       Checks for Evaluations of Deep Neural Network Explanations", CVPR 2023.
    """

    name = "Model Randomisation Test"
    interpretation = (
        "Lower is better: the similarity of the explanations before and after layers are "
        "randomised in turn; an explanation that stays near the ceiling step does not depend "
        "on what the model learned, one near the floor step does")
    call_keywords = ("x_train", "y_train")

    @validated(layer_order=Choice(LAYER_ORDERS))
    def __init__(
        self,
        layer_order: str = "top_down",
        similarity: str | Sequence[str] | None = None,
        retrainer: Any = None,
        seed: int = 0,
        target: str = "predicted",
        **kwargs: Any,
    ):
        self.layer_order = layer_order
        super().__init__(similarity, retrainer, seed, target=target, **kwargs)
        self.layers: list[str] = []

    def _check_keywords(self, keywords: dict[str, Any]) -> None:
        if (keywords.get("x_train") is None) != (keywords.get("y_train") is None):
            raise ValueError(f"{type(self).__name__}.__call__ needs both 'x_train' and "
                             "'y_train', or neither (to train the ceiling model on x_batch, "
                             "y_batch). Got only one.")

    def _evaluate(self, call: Call, x_train: Any = None, y_train: Any = None) -> dict:
        self._require_explain_func(call)
        if self.retrainer is not None:
            train = (self._more_inputs(call, x_train, y_train, ("x_train", "y_train"), 2)
                     if x_train is not None else
                     self._more_inputs(call, call.x, call.y, ("x_batch", "y_batch"), 2))
        self._choose_similarities(call.x, call.channel_last)
        self.layers = [name for name, _ in execution_order(call.model, call.x[:1].to(call.device))]
        targets = self._targets(call, call.x, call.y)
        explain = self._explainer(call, call.x, targets, call.a_batch, {
            "a": "a_batch", "original": "original model", "floor": "freshly initialised model",
            "ceiling": "model trained with another seed"})
        seeds = SanitySeeds.derive(self.seed)
        ceiling = (None if self.retrainer is None
                   else self.retrainer.fit(train.x, train.y, seed=seeds.ceiling))
        comparisons = model_randomisation(
            call.model, explain, self.layers, seeds=seeds, similarities=self._similarities,
            layer_order=self.layer_order, ceiling=ceiling)  # type: ignore[arg-type]
        bar = tqdm(comparisons, total=len(self.layers) + 1 + (ceiling is not None),
                   desc="randomising layers", disable=not self.display_progressbar, leave=False)
        position = {**{name: i for i, name in enumerate(self.layers)}, "floor": -1, "ceiling": -2}
        return self._summary(self._keep(bar, position=lambda c: position[c.step]))


@final
class DataRandomisation(_RandomisationMetric):
    """Data (label) randomisation test (Adebayo et al., 2018).

    Trains a model of the same architecture on the training data with
    permuted labels until it fits them (``min_train_accuracy`` on the
    training set), then compares, per test sample and for its true label,
    the explanation of the user's true-label model with that of the
    random-label model. The random-label model has learnt nothing about the
    task, so an explanation that stays similar does not reflect what the
    model learnt. Lower similarity passes the test.

    Parameters
    ----------
    retrainer : Retrainer, optional
        Trains the random-label and the ceiling model. A retrainer with
        ``fit_until(x, y, *, seed, min_accuracy, max_epochs)`` (as
        :class:`~quantus_roar.TorchRetrainer`) trains longer until the labels
        are fitted; any other retrainer is called once with ``fit``. Default
        ``TorchRetrainer(model)`` with a warning.
    min_train_accuracy : float, default 0.95
        Training accuracy on the permuted labels to reach; a warning names the
        accuracy reached if it is not.
    max_epochs : int, default 100
        Longest training ``fit_until`` may use.
    similarity : str or sequence of str, optional
        As :class:`ModelRandomisation`.
    test_size : float, default 0.2
        Stratified test share of ``x_batch`` when no ``x_test`` is given.
    seed : int, default 0
        Seeds the split and, through :class:`quantus_roar.sanity.SanitySeeds`
        (as the runner's first repeat), the permutation, the floor model and
        the training seeds.
    target : {"predicted", "label"}, default "predicted"
        The class explained by all three models: the true-label model's
        prediction, or the test label.
    executor : {None, "local", "processes", "ray"} or quantus_roar.executors.Executor
        Where the random-label and the ceiling model are trained (two tasks,
        in parallel on worker processes or Ray); as :class:`~quantus_roar.ROAR`.
    **kwargs
        Quantus' base arguments, as :class:`ModelRandomisation`.

    Attributes
    ----------
    train_accuracy, test_accuracy : float
        Of the random-label model on the permuted training labels and on the
        true test labels.

    Notes
    -----
    Called as every Quantus metric (see
    :meth:`~quantus_roar.metrics._base.QuantusRoarMetric.__call__`) with
    ``explain_func`` required. ``x_batch, y_batch`` are the training data
    (labels permuted for the random-label model), split into train and test
    when no ``x_test, y_test`` are given; ``a_batch`` (only its test part
    is used) or ``a_test`` are the true-label model's explanations of the
    test samples. Returns ``{"random_labels": mean, "floor": mean,
    "ceiling": mean}``, nested ``{similarity: {...}}`` for several
    similarities, computed by :func:`quantus_roar.sanity.data_randomisation`
    as in the runner.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """

    name = "Data Randomisation Test"
    interpretation = (
        "Lower is better: the similarity between the explanations of the model and of one "
        "trained on permuted labels; near the ceiling step, the explanation does not depend "
        "on the relation between inputs and labels")
    call_keywords = ("x_test", "y_test", "a_test")
    min_classes = 2

    @validated(min_train_accuracy=Real(0, 1, open="low"), max_epochs=Int(1),
               test_size=Real(0, 1, open="both"), executor=ExecutorName())
    def __init__(
        self,
        retrainer: Any = None,
        min_train_accuracy: float = 0.95,
        max_epochs: int = 100,
        similarity: str | Sequence[str] | None = None,
        test_size: float = 0.2,
        seed: int = 0,
        target: str = "predicted",
        executor: Any = None,
        **kwargs: Any,
    ):
        super().__init__(similarity, retrainer, seed, target=target, **kwargs)
        self.min_train_accuracy = min_train_accuracy
        self.max_epochs = max_epochs
        self.test_size = test_size
        self.executor = executor
        self.train_accuracy = float("nan")
        self.test_accuracy = float("nan")
        if retrainer is None:
            self._warn(f"{type(self).__name__} got no retrainer, so it will train copies of the "
                       "model with TorchRetrainer's default recipe (for SmallCNN on digits). "
                       "Pass retrainer=quantus_roar.TorchRetrainer(...) with a recipe that can "
                       "fit random labels on your data.")

    def _check_keywords(self, keywords: dict[str, Any]) -> None:
        check_test_pair(keywords, type(self).__name__)

    def _fit_models(self, retrainer: Any, x: torch.Tensor, y_perm: torch.Tensor,
                    y: torch.Tensor, fit_seed: int, ceiling_seed: int
                    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The random-label model (fitted until min_train_accuracy) and the ceiling model,
        trained as two tasks of the executor (in parallel on Ray)."""
        ex = get_executor(self.executor)
        try:
            if isinstance(ex, ProcessExecutor):
                check_picklable(retrainer, f"the retrainer of {type(self).__name__}")
            ex.submit("random_labels", fit_task, retrainer, x, y_perm, fit_seed,
                      self.min_train_accuracy, self.max_epochs, **task_resources(retrainer))
            ex.submit("ceiling", fit_task, retrainer, x, y, ceiling_seed,
                      **task_resources(retrainer))
            done = {r.tag: r for r in ex.drain()}
        finally:
            if ex is not self.executor:
                ex.close()
        for tag in ("random_labels", "ceiling"):
            if not done[tag].ok and isinstance(ex, LocalExecutor):
                raise done[tag].error  # type: ignore[misc]
            if not done[tag].ok:
                raise RuntimeError(f"{type(self).__name__}: training the {tag.replace('_', '-')} "
                                   f"model failed on every retry: {done[tag].error!r}"
                                   ) from done[tag].error
        model, acc = done["random_labels"].value
        self.train_accuracy = float(acc)
        if acc < self.min_train_accuracy:
            self._warn(f"The random-label model reached {acc:.3f} training accuracy, below "
                       f"min_train_accuracy={self.min_train_accuracy}: it has not fitted the "
                       "permuted labels, so its explanations are not the test's. Train longer "
                       "(max_epochs, the retrainer's recipe) or use fewer training samples.")
        return model, done["ceiling"].value[0]

    def _evaluate(self, call: Call, x_test: Any = None, y_test: Any = None,
                  a_test: Any = None) -> dict:
        self._require_explain_func(call)
        if x_test is None:
            tr, te = stratified_split(call.y, self.test_size, self.seed,
                                      owner=f"{type(self).__name__}.__call__")
            x_tr, y_tr, x_te, y_te = call.x[tr], call.y[tr], call.x[te], call.y[te]
            a_orig, a_name = (None if call.a_batch is None else np.asarray(call.a_batch)[te],
                              "a_batch")
        else:
            test = self._more_inputs(call, x_test, y_test, ("x_test", "y_test"))
            x_tr, y_tr, x_te, y_te = call.x, call.y, test.x, test.y
            a_orig, a_name = a_test, "a_test"
        retrainer = retrainer_or_default(self.retrainer, call)
        self._choose_similarities(x_te, call.channel_last)
        # Before any training: a model whose layers cannot be re-initialised fails here.
        layers = [n for n, _ in execution_order(call.model, x_te[:1].to(call.device))]
        explain = self._explainer(call, x_te, self._targets(call, x_te, y_te), a_orig, {
            "a": a_name, "original": "true-label model", "random_labels": "random-label model",
            "floor": "freshly initialised model", "ceiling": "model trained with another seed"})
        explain(call.model, "original")  # the original explanations, before any training
        seeds = SanitySeeds.derive(self.seed)
        random_model, ceiling = self._fit_models(
            retrainer, x_tr, torch.from_numpy(permuted_labels(y_tr, seeds)), y_tr, seeds.fit,
            seeds.ceiling)
        self.test_accuracy = float(retrainer.score(random_model, x_te, y_te))
        steps = self._keep(data_randomisation(
            call.model, explain, layers, seeds=seeds, similarities=self._similarities,
            random_label_model=random_model, ceiling=ceiling))
        self.results = self.results.assign(random_label_train_accuracy=self.train_accuracy,
                                           random_label_test_accuracy=self.test_accuracy)
        return self._summary(steps)
