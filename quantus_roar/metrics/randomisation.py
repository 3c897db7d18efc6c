"""The sanity checks of Adebayo et al.: model (parameter) and data (label) randomisation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, final

import numpy as np
import pandas as pd
import torch
from quantus.helpers.enums import DataType, EvaluationCategory, ScoreDirection
from tqdm.auto import tqdm

from quantus_roar._validation import check_batch_size, check_choice, model_device
from quantus_roar.executors import LocalExecutor, get_executor
from quantus_roar.explainers import explanation_targets
from quantus_roar.metrics._base import (
    QuantusRoarMetric,
    check_call_kwargs,
    check_executor,
    check_inputs,
    check_retrainer,
    check_test_pair,
    compute_attributions,
    explain_kwargs,
    retrainer_or_default,
)
from quantus_roar.randomisation import LAYER_ORDERS, execution_order, fresh_model
from quantus_roar.retrain.base import fit_task
from quantus_roar.sanity import SanitySeeds, compare, model_randomisation_steps, permuted_labels
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
    """Shared machinery: explain with a model, compare with the original maps."""

    data_applicability: ClassVar[set[DataType]] = {
        DataType.IMAGE, DataType.TABULAR, DataType.TIMESERIES}
    evaluation_category: ClassVar[EvaluationCategory] = EvaluationCategory.RANDOMISATION
    score_direction: ClassVar[ScoreDirection] = ScoreDirection.LOWER

    def __init__(self, similarity: str | Sequence[str] | None, retrainer: Any, seed: int,
                 **base: Any):
        self.similarity = _similarity_names(similarity, type(self).__name__)
        self.retrainer = check_retrainer(retrainer, type(self).__name__)
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

    def _explain(self, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor,
                 explain_func: Callable, kwargs: dict | None, batch_size: int, what: str,
                 channel_last: bool, reference_shape: tuple | None) -> torch.Tensor:
        a = compute_attributions(model, x, targets, explain_func, kwargs, batch_size,
                                 type(self).__name__, what=what,
                                 progress=self.display_progressbar, targets=targets)
        a_t = self._prepare_attributions(a, x, what, channel_last)
        if reference_shape is not None and tuple(a_t.shape) != reference_shape:
            raise ValueError(f"The explanations of the {what} have shape {tuple(a_t.shape)}, "
                             f"but the original ones (a_batch) have shape {reference_shape}. "
                             "Pass a_batch computed with the same explain_func, or leave it out.")
        return a_t

    def _compare(self, step: str, original: torch.Tensor, other: torch.Tensor,
                 rows: list[dict[str, Any]], **info: Any) -> None:
        for name, values in compare(original, other, self._similarities).items():
            self.scores.setdefault(name, {})[step] = values
            rows.extend({"similarity": name, "step": step, "sample": i, "value": float(v), **info}
                        for i, v in enumerate(values))

    def _summary(self, steps: Sequence[str]) -> Any:
        means = {name: {step: float(np.nanmean(self.scores[name][step])) for step in steps}
                 for name in self._similarities}
        if self.return_aggregate:
            agg = self.aggregate_func or np.mean
            reduced = {name: float(agg(np.asarray(list(per.values()))))
                       for name, per in means.items()}
            one = len(self._similarities) == 1
            out: Any = reduced[self._similarities[0]] if one else reduced
        else:
            out = means[self._similarities[0]] if len(self._similarities) == 1 else means
        self.evaluation_scores = out
        self.all_evaluation_scores.append(out)
        return out

    def _require_explain_func(self, explain_func: Callable | None) -> Callable:
        if explain_func is None:
            raise ValueError(f"{type(self).__name__} recomputes explanations of changed models "
                             "and needs an 'explain_func' (for example "
                             "explain_func=quantus_roar.explain, explain_func_kwargs={'method': "
                             "'Gradient'}).")
        if not callable(explain_func):
            raise TypeError(f"The 'explain_func' parameter of {type(self).__name__} must be "
                            f"callable. Got {type(explain_func).__name__} instead.")
        return explain_func


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
    abs, normalise, normalise_func, normalise_func_kwargs
        Quantus' preprocessing, applied to every explanation.
    return_aggregate : bool, default False
        Return ``aggregate_func`` (default ``np.mean``) of the per-layer means.
    aggregate_func, default_plot_func, disable_warnings, display_progressbar
        As in every Quantus metric.

    Attributes
    ----------
    scores : dict
        ``{similarity: {step: per-sample array}}``.
    results : pandas.DataFrame
        One row per (similarity, step, sample).
    layers : list of str
        The layers in execution order found in the last call.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    .. [2] Binder et al., "Shortcomings of Top-Down Randomization-Based Sanity
       Checks for Evaluations of Deep Neural Network Explanations", CVPR 2023.
    """

    name = "ModelRandomisation"

    def __init__(
        self,
        layer_order: str = "top_down",
        similarity: str | Sequence[str] | None = None,
        retrainer: Any = None,
        seed: int = 0,
        target: str = "predicted",
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
        self.layer_order = check_choice(layer_order, "layer_order", type(self).__name__,
                                        LAYER_ORDERS)
        super().__init__(
            similarity, retrainer, seed, target=target, abs=abs, normalise=normalise,
            normalise_func=normalise_func, normalise_func_kwargs=normalise_func_kwargs,
            return_aggregate=return_aggregate, aggregate_func=aggregate_func,
            default_plot_func=default_plot_func, disable_warnings=disable_warnings,
            display_progressbar=display_progressbar, **kwargs,
        )
        self.layers: list[str] = []

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
        x_train: Any = None,
        y_train: Any = None,
        **kwargs: Any,
    ) -> dict:
        """Similarity of the original explanations to those of each randomised model.

        Parameters
        ----------
        model : torch.nn.Module
            The trained model; never modified.
        x_batch, y_batch : array-like
            Samples explained (for their labels ``y_batch``).
        a_batch : array-like, optional
            Explanations of the original model; computed with ``explain_func``
            when missing (they must match its output shape).
        explain_func, explain_func_kwargs
            Required: every step is explained again.
        batch_size : int, default 64
            Samples per explain_func call.
        x_train, y_train : array-like, optional
            Training data of the ceiling model (default ``x_batch, y_batch``).
        s_batch, channel_first, model_predict_kwargs, softmax, device
            As in Quantus.

        Returns
        -------
        dict
            ``{layer: mean similarity}`` for each step in the order applied,
            then ``"floor"`` (fresh model) and, with a retrainer,
            ``"ceiling"``; nested ``{similarity: {...}}`` for several
            similarities.
        """
        owner = type(self).__name__
        check_call_kwargs(kwargs)
        explain_func = self._require_explain_func(explain_func)
        check_batch_size(batch_size, f"{owner}.__call__")
        if (x_train is None) != (y_train is None):
            raise ValueError(f"{owner}.__call__ needs both 'x_train' and 'y_train', or neither "
                             "(to train the ceiling model on x_batch, y_batch). Got only one.")
        inputs = check_inputs(model, x_batch, y_batch, owner, channel_first=channel_first,
                              device=device)
        dev = model_device(model, device)
        if self.retrainer is not None:
            train = check_inputs(model, x_train if x_train is not None else x_batch,
                                 y_train if y_train is not None else y_batch, owner,
                                 channel_first=channel_first, device=device,
                                 x_name="x_train", y_name="y_train",
                                 sample_shape=tuple(inputs.x.shape[1:]), min_classes=2)
        x = inputs.x
        self._choose_similarities(x, inputs.channel_last)
        self.layers = [name for name, _ in execution_order(model, x[:1].to(dev))]
        y = explanation_targets(model, x, inputs.y, self.target, batch_size=batch_size,
                                device=dev, owner=f"{owner}.__call__")
        ctx = (explain_func, explain_kwargs(explain_func_kwargs, device), batch_size)
        if a_batch is None:
            original = self._explain(model, x, y, *ctx, "original model", inputs.channel_last,
                                     None)
        else:
            original = self._prepare_attributions(a_batch, x, "a_batch", inputs.channel_last)
        shape = tuple(original.shape)
        self.scores, rows = {}, []
        steps = []
        seeds = SanitySeeds.derive(self.seed)
        ceiling = (None if self.retrainer is None
                   else self.retrainer.fit(train.x, train.y, seed=seeds.ceiling))
        what = {"floor": "freshly initialised model", "ceiling": "model trained with another seed"}
        bar = tqdm(model_randomisation_steps(model, self.layers, self.layer_order, seeds,
                                             ceiling),
                   total=len(self.layers) + 1 + (ceiling is not None),
                   desc="randomising layers", disable=not self.display_progressbar, leave=False)
        for i, (step, changed) in enumerate(bar):
            start = time.perf_counter()
            a = self._explain(changed, x, y, *ctx,
                              what.get(step, f"model with layer '{step}' randomised"),
                              inputs.channel_last, shape)
            position = i if step not in what else (-1 if step == "floor" else -2)
            self._compare(step, original, a, rows, position=position,
                          time_s=time.perf_counter() - start)
            steps.append(step)
        self.results = pd.DataFrame(rows)
        return self._summary(steps)


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
    executor : {None, "local", "ray"} or quantus_roar.executors.Executor
        Where the random-label and the ceiling model are trained (two tasks,
        in parallel on Ray); as :class:`~quantus_roar.ROAR`.
    abs, normalise, normalise_func, normalise_func_kwargs, return_aggregate,
    aggregate_func, default_plot_func, disable_warnings, display_progressbar
        As :class:`ModelRandomisation`.

    Attributes
    ----------
    train_accuracy, test_accuracy : float
        Of the random-label model on the permuted training labels and on the
        true test labels.

    References
    ----------
    .. [1] Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """

    name = "DataRandomisation"

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
        if not 0.0 < float(min_train_accuracy) <= 1.0:
            raise ValueError(f"The 'min_train_accuracy' parameter of {owner} must be in (0, 1]. "
                             f"Got {min_train_accuracy!r} instead.")
        if not isinstance(max_epochs, (int, np.integer)) or max_epochs < 1:
            raise ValueError(f"The 'max_epochs' parameter of {owner} must be a positive integer. "
                             f"Got {max_epochs!r} instead.")
        if not 0.0 < float(test_size) < 1.0:
            raise ValueError(f"The 'test_size' parameter of {owner} must be in (0, 1). Got "
                             f"{test_size!r} instead.")
        super().__init__(
            similarity, retrainer, seed, target=target, abs=abs, normalise=normalise,
            normalise_func=normalise_func, normalise_func_kwargs=normalise_func_kwargs,
            return_aggregate=return_aggregate, aggregate_func=aggregate_func,
            default_plot_func=default_plot_func, disable_warnings=disable_warnings,
            display_progressbar=display_progressbar, **kwargs,
        )
        self.min_train_accuracy = float(min_train_accuracy)
        self.max_epochs = int(max_epochs)
        self.test_size = float(test_size)
        self.executor = check_executor(executor, owner)
        self.train_accuracy = float("nan")
        self.test_accuracy = float("nan")
        if retrainer is None:
            self._warn(f"{owner} got no retrainer, so it will train copies of the model with "
                       "TorchRetrainer's default recipe (for SmallCNN on digits). Pass "
                       "retrainer=quantus_roar.TorchRetrainer(...) with a recipe that can fit "
                       "random labels on your data.")

    def _fit_models(self, retrainer: Any, x: torch.Tensor, y_perm: torch.Tensor,
                    y: torch.Tensor, fit_seed: int, ceiling_seed: int
                    ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The random-label model (fitted until min_train_accuracy) and the ceiling model,
        trained as two tasks of the executor (in parallel on Ray)."""
        ex = get_executor(self.executor)
        try:
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
    ) -> dict:
        """Similarity of true-label and random-label explanations of the test samples.

        Parameters
        ----------
        model : torch.nn.Module
            The model trained on the true labels; never modified.
        x_batch, y_batch : array-like
            Training data (labels permuted for the random-label model); split
            into train and test when no ``x_test`` is given.
        a_batch : array-like, optional
            Explanations of ``x_batch`` by ``model``; only the test part is used.
        x_test, y_test, a_test : array-like, optional
            Samples to explain, and their original explanations.
        explain_func, explain_func_kwargs, batch_size
            Required explain function, called in batches.

        Returns
        -------
        dict
            ``{"random_labels": mean, "floor": mean, "ceiling": mean}``, nested
            ``{similarity: {...}}`` for several similarities.
        """
        owner = type(self).__name__
        check_call_kwargs(kwargs)
        explain_func = self._require_explain_func(explain_func)
        check_batch_size(batch_size, f"{owner}.__call__")
        check_test_pair(x_test, y_test, owner)
        inputs = check_inputs(model, x_batch, y_batch, owner, channel_first=channel_first,
                              device=device, min_classes=2)
        if x_test is None:
            tr, te = stratified_split(inputs.y, self.test_size, self.seed,
                                      owner=f"{owner}.__call__")
            x_tr, y_tr, x_te, y_te = inputs.x[tr], inputs.y[tr], inputs.x[te], inputs.y[te]
            a_orig = None if a_batch is None else np.asarray(a_batch)[te]
        else:
            test = check_inputs(model, x_test, y_test, owner, channel_first=channel_first,
                                device=device, x_name="x_test", y_name="y_test",
                                sample_shape=tuple(inputs.x.shape[1:]))
            x_tr, y_tr, x_te, y_te = inputs.x, inputs.y, test.x, test.y
            a_orig = a_test
        retrainer = retrainer_or_default(self.retrainer, model, device)
        self._choose_similarities(x_te, inputs.channel_last)
        dev = model_device(model, device)
        # Before any training: a model whose layers cannot be re-initialised fails here.
        layers = [n for n, _ in execution_order(model, x_te[:1].to(dev))]
        t_te = explanation_targets(model, x_te, y_te, self.target, batch_size=batch_size,
                                   device=dev, owner=f"{owner}.__call__")
        ctx = (explain_func, explain_kwargs(explain_func_kwargs, device), batch_size)
        cl = inputs.channel_last
        if a_orig is None:
            original = self._explain(model, x_te, t_te, *ctx, "true-label model", cl, None)
        else:
            original = self._prepare_attributions(a_orig, x_te, "a_test", cl)
        shape = tuple(original.shape)
        seeds = SanitySeeds.derive(self.seed)
        y_perm = torch.from_numpy(permuted_labels(y_tr, seeds))
        self.scores, rows = {}, []
        random_model, ceiling_model = self._fit_models(retrainer, x_tr, y_perm, y_tr, seeds.fit,
                                                       seeds.ceiling)
        self.test_accuracy = float(retrainer.score(random_model, x_te, y_te))
        a = self._explain(random_model, x_te, t_te, *ctx, "random-label model", cl, shape)
        self._compare("random_labels", original, a, rows)
        a = self._explain(fresh_model(model, layers, seeds.floor), x_te, t_te, *ctx,
                          "freshly initialised model", cl, shape)
        self._compare("floor", original, a, rows)
        a = self._explain(ceiling_model, x_te, t_te, *ctx, "model trained with another seed",
                          cl, shape)
        self._compare("ceiling", original, a, rows)
        self.results = pd.DataFrame(rows).assign(
            random_label_train_accuracy=self.train_accuracy,
            random_label_test_accuracy=self.test_accuracy,
        )
        return self._summary(["random_labels", "floor", "ceiling"])
