"""How removed features are replaced: small imputer objects and :func:`impute`.

Each imputer is a frozen dataclass holding its own settings, validated once
when it is made (``NoisyLinear(noise=0.0)``, ``Blur(sigma=2)``); the names
``"channel_mean"``, ``"zero"``, ``"image_mean"``, ``"blur"`` and
``"noisy_linear"`` are shortcuts for them (:meth:`Imputer.ensure`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from quantus_roar._hashing import hash_normal
from quantus_roar._validation import (
    INPUT_HINT,
    as_tensor,
    check_channel_first,
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_seed,
    like_input,
)
from quantus_roar.removal._solver import noisy_linear_fill
from quantus_roar.removal.ranking import _sample_ids

__all__ = [
    "IMPUTERS", "IMPUTER_KWARGS", "Blur", "ChannelMean", "ImageMean", "Imputer", "NoisyLinear",
    "Zero", "channel_means", "impute",
]


def channel_means(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Mean of each channel over samples and positions: shape (C,) for (N, C, ...) input.

    For (N, F) tabular input the mean of each feature, shape (F,). Computed in
    float64 and returned in the dtype of ``x`` (float32 for integer input).
    """
    x_t = as_tensor(x, "x", "channel_means")
    if x_t.ndim < 2 or x_t.shape[0] == 0:
        raise ValueError("The 'x' parameter of channel_means must be a non-empty batch of shape "
                         f"(N, C, ...) or (N, F). Got shape {tuple(x_t.shape)} instead.")
    dims = [0, *range(2, x_t.ndim)]
    out_dtype = x_t.dtype if x_t.is_floating_point() else torch.float32
    return like_input(x_t.double().mean(dim=dims).to(out_dtype), x)


def _check_stats(stats: Any, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(stats, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[1])
    if s.shape != (x.shape[1],) or not bool(torch.isfinite(s).all()):
        raise ValueError(
            "The 'stats' parameter of impute must be finite per-channel means of the training "
            f"set, shape ({x.shape[1]},) for inputs of shape {tuple(x.shape)} (see "
            f"channel_means). Got shape {tuple(s.shape)} instead."
        )
    return s.reshape(1, -1, *([1] * (x.ndim - 2)))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images (std ``sigma`` pixels, kernel
    radius ``ceil(3 sigma)``), edges replicated; a (B, C, 1, W) batch is blurred along W."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    b, c, h, w = x.shape
    planes = x.reshape(b * c, 1, h, w)
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))
    return planes.reshape(b, c, h, w)


def _kept_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean over the kept (unmasked) positions of each sample and channel; 0 if none kept."""
    dims = tuple(range(2, x.ndim)) if x.ndim > 2 else (1,)
    kept = (~m).to(x.dtype)
    total = (x * kept).sum(dim=dims, keepdim=True)
    count = kept.sum(dim=dims, keepdim=True)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros((), dtype=x.dtype,
                                                                              device=x.device))



# --------------------------------------------------------------------------- imputers


class Imputer:
    """How removed features are replaced. Subclasses are frozen dataclasses of their settings.

    :meth:`fill` receives the inputs ``x`` (N, C, ...) and the full removal
    masks (P, N, C, ...) and returns the replacement values, broadcastable to
    the masks; :func:`impute` keeps ``x`` where nothing is removed.
    """

    #: The imputer's name, as accepted by :meth:`ensure` and ``impute(imputer=...)``.
    name: ClassVar[str] = ""
    #: Whether the imputer needs images (N, C, H, W).
    images_only: ClassVar[bool] = False

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The imputer's settings, as keyword arguments of its class."""
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}  # type: ignore[call-overload]

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{self.name}({args})" if args else self.name

    @staticmethod
    def ensure(imputer: str | Imputer, kwargs: dict | None = None, owner: str = "impute"
               ) -> Imputer:
        """The imputer object for ``imputer``: an :class:`Imputer` as it is, or a name with
        its settings in ``kwargs``.

        Raises
        ------
        ValueError
            An unknown name, or settings out of range.
        TypeError
            Settings the imputer does not take, or settings beside an object.

        Examples
        --------
        >>> Imputer.ensure("noisy_linear", {"noise": 0.0})
        NoisyLinear(noise=0.0, tol=1e-06, max_iter=1000)
        """
        kwargs = dict(kwargs or {})
        if isinstance(imputer, Imputer):
            if kwargs:
                raise TypeError(f"{owner} got imputer settings {sorted(kwargs)} beside the "
                                f"imputer object {imputer!r}; set them on the object instead.")
            return imputer
        if not isinstance(imputer, str):
            raise TypeError(f"The 'imputer' parameter of {owner} must be one of {list(IMPUTERS)} "
                            f"or an Imputer object. Got {type(imputer).__name__} instead.")
        check_choice(imputer, "imputer", owner, IMPUTERS)
        allowed = IMPUTER_KWARGS[imputer]
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise TypeError(f"{owner}(imputer={imputer!r}) got unexpected keyword argument(s) "
                            f"{unknown}; it accepts {sorted(allowed) or 'none'}.")
        return _BY_NAME[imputer](**kwargs)


@dataclass(frozen=True)
class ChannelMean(Imputer):
    """The per-channel mean of the training set (``stats``) -- the ROAR paper's fill.

    Computed from ``x`` itself when no ``stats`` are given.
    """

    name: ClassVar[str] = "channel_mean"

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        return _check_stats(channel_means(x) if stats is None else stats, x)


@dataclass(frozen=True)
class Zero(Imputer):
    """0."""

    name: ClassVar[str] = "zero"

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        return torch.zeros((), dtype=x.dtype, device=x.device)


@dataclass(frozen=True)
class ImageMean(Imputer):
    """The mean of the sample's *kept* features per channel (0 where nothing is kept)."""

    name: ClassVar[str] = "image_mean"

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        fill = _kept_mean(x[None].expand_as(masks).flatten(0, 1), masks.flatten(0, 1))
        return fill.unflatten(0, masks.shape[:2])


@dataclass(frozen=True)
class Blur(Imputer):
    """The Gaussian-blurred image (std ``sigma`` pixels, edges replicated).

    Blurred from the full image, so some information of the removed pixels
    leaks into the fill.
    """

    name: ClassVar[str] = "blur"
    images_only: ClassVar[bool] = True
    sigma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_number(self.sigma, "sigma", "Blur", low=0.0,
                                                       low_open=True))

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        return gaussian_blur(x, self.sigma)


@dataclass(frozen=True)
class NoisyLinear(Imputer):
    """ROAD's imputation (Rong et al., 2022): the neighbour average plus Gaussian noise.

    Every removed value is the weighted mean of its 8 neighbours (1/6 edge,
    1/12 diagonal, renormalised at borders), solved jointly for every channel
    plane by conjugate gradients (relative residual ``tol``, at most
    ``max_iter`` iterations), plus noise of std ``noise`` drawn from a hash
    of the seed and the sample id. A removed region with no kept neighbour
    is filled with the mean of the kept values.
    """

    name: ClassVar[str] = "noisy_linear"
    images_only: ClassVar[bool] = True
    noise: float = 0.01
    tol: float = 1e-6
    max_iter: int = 1000

    def __post_init__(self) -> None:
        owner = "NoisyLinear"
        object.__setattr__(self, "noise", check_number(self.noise, "noise", owner, low=0.0))
        object.__setattr__(self, "tol", check_number(self.tol, "tol", owner, low=0.0, high=1.0,
                                                     low_open=True, high_open=True))
        object.__setattr__(self, "max_iter", check_int(self.max_iter, "max_iter", owner, low=1))

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        n_p = masks.shape[0]
        n, c, h, w = x.shape
        planes = x[None].expand(n_p, n, c, h, w).reshape(-1, h, w)
        solved = noisy_linear_fill(planes, masks.reshape(-1, h, w), self.tol, self.max_iter)
        fill = solved.reshape(n_p, n, c, h, w)
        if not self.noise:
            return fill
        ids = _sample_ids(sample_ids, n, x.device, "impute")
        return fill + self.noise * hash_normal(seed, ids, c * h * w, x.dtype).view(n, c, h, w)


@dataclass(frozen=True)
class Constant(Imputer):
    """One value everywhere, e.g. 0.5; :class:`~quantus_roar.MaskLeakage` fills with 1 on
    all-zero inputs, so that the inputs are the masks themselves."""

    name: ClassVar[str] = "constant"
    value: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_number(self.value, "value", "Constant"))

    def fill(self, x: torch.Tensor, masks: torch.Tensor, *, stats: Any, seed: int,
             sample_ids: Any) -> torch.Tensor:
        return torch.full((), self.value, dtype=x.dtype, device=x.device)


_BY_NAME: dict[str, type[Imputer]] = {
    cls.name: cls for cls in (ChannelMean, Zero, ImageMean, Blur, NoisyLinear, Constant)}
IMPUTERS: tuple[str, ...] = tuple(_BY_NAME)
# Keyword arguments each imputer accepts.
IMPUTER_KWARGS: dict[str, frozenset[str]] = {
    name: frozenset(f.name for f in fields(cls)) for name, cls in _BY_NAME.items()}


# --------------------------------------------------------------------------- impute


def impute(
    x: torch.Tensor | np.ndarray, masks: torch.Tensor | np.ndarray,
    imputer: str | Imputer = "channel_mean", *, stats: Any = None, seed: int = 0,
    sample_ids: Any = None, **kwargs: Any,
) -> torch.Tensor | np.ndarray:
    """Replace the removed features of ``x``; ``x`` itself is never modified.

    Parameters
    ----------
    x : torch.Tensor or numpy.ndarray
        Inputs, shape (N, C, H, W) (or (N, C, *spatial), or (N, F)).
    masks : torch.Tensor or numpy.ndarray
        Bool, True where a feature is removed: shape broadcastable to
        ``x.shape``, or with a leading percentage axis (P, N, ...) as returned
        by :func:`removal_masks`; a (N, 1, H, W) mask removes every channel.
    imputer : str or Imputer, default "channel_mean"
        An imputer object (:class:`ChannelMean`, :class:`Zero`,
        :class:`ImageMean`, :class:`Blur`, :class:`NoisyLinear`) or its name,
        with its settings as keyword arguments:

        * ``"channel_mean"`` (default): the per-channel mean of the training
          set, ``stats`` -- the ROAR paper's choice. Computed from ``x`` when
          ``stats`` is not given.
        * ``"zero"``: 0.
        * ``"image_mean"``: the mean of the sample's *kept* features per
          channel (0 where nothing is kept).
        * ``"blur"``: the Gaussian-blurred image (keyword ``sigma``, default
          1.0 pixel). It is blurred from the full image, so some information of
          the removed pixels leaks into the fill.
        * ``"noisy_linear"``: ROAD's imputation (Rong et al., 2022): every
          removed value is the weighted mean of its 8 neighbours (1/6 edge,
          1/12 diagonal, renormalised at borders), solved jointly, plus
          Gaussian noise of std ``noise`` (default 0.01). Every channel plane
          of every image is solved in one batched conjugate-gradient run
          (keywords ``tol``, default 1e-6 relative residual, and ``max_iter``,
          default 1000). A removed region with no kept neighbour at all is
          filled with the image mean of the kept values.
    stats : array-like of shape (C,) or float, optional
        Training-set channel means for ``"channel_mean"`` (see
        :func:`channel_means`).
    seed : int, default 0
        Seed of the ``noisy_linear`` noise.
    sample_ids : sequence of int, optional
        Position of each sample in the full dataset, so that chunked
        processing draws the same noise as one call.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        Shape ``x.shape``, or (P, *x.shape) for masks with a percentage axis;
        floating dtype of ``x`` (float32 for integer input).

    Raises
    ------
    ValueError
        Empty batch, NaN or inf in ``x``, channel-last images, masks that do
        not fit ``x``, an unknown imputer, bad ``stats``, ``"blur"`` /
        ``"noisy_linear"`` on non-image input, or keyword values out of range
        (``sigma`` > 0, ``noise`` >= 0, ``tol`` in (0, 1), ``max_iter`` >= 1).
    TypeError
        Non-boolean masks or unknown keyword arguments.

    Warns
    -----
    QuantusRoarWarning
        ``"noisy_linear"`` stopped at ``max_iter`` before every plane
        converged.

    References
    ----------
    .. [1] Hooker et al., "A Benchmark for Interpretability Methods in Deep
       Neural Networks", NeurIPS 2019.
    .. [2] Rong et al., "A Consistent and Efficient Evaluation Strategy for
       Attribution Methods", ICML 2022.
    """
    owner = "impute"
    imp = Imputer.ensure(imputer, kwargs, owner)
    x_t = as_tensor(x, "x", owner)
    m_t = as_tensor(masks, "masks", owner)
    if x_t.ndim < 2 or x_t.shape[0] == 0:
        raise ValueError(f"The 'x' parameter of {owner} must be a non-empty batch of shape "
                         f"(N, C, H, W) or (N, F). Got shape {tuple(x_t.shape)} instead.")
    if m_t.dtype != torch.bool:
        raise TypeError(f"The 'masks' parameter of {owner} must be a boolean tensor or array "
                        f"(True = removed). Got dtype {m_t.dtype} instead.")
    m_t = m_t.to(x_t.device)
    has_p = m_t.ndim == x_t.ndim + 1
    m_p = m_t if has_p else m_t[None]
    fits = m_p.ndim == x_t.ndim + 1 and all(
        m in (1, s) for m, s in zip(m_p.shape[2:], x_t.shape[1:], strict=True))
    if not fits or m_p.shape[1] != x_t.shape[0]:
        raise ValueError(
            f"The 'masks' parameter of {owner} must have the shape of x {tuple(x_t.shape)} (size-1 "
            f"channel axis allowed), optionally with a leading percentage axis. Got shape "
            f"{tuple(m_t.shape)} instead."
        )
    if not x_t.is_floating_point():
        x_t = x_t.float()
    check_channel_first(tuple(x_t.shape), "x", owner)
    check_seed(seed, owner)
    check_finite(x_t, "x", owner, hint=INPUT_HINT)
    m_full = m_p.expand(m_p.shape[0], *x_t.shape)
    if imp.images_only and x_t.ndim != 4:
        raise ValueError(f"impute(imputer={imp.name!r}) needs images of shape (N, C, H, W). Got "
                         f"shape {tuple(x_t.shape)}; pass time series (N, C, T) as (N, C, 1, T).")
    fill = imp.fill(x_t, m_full, stats=stats, seed=seed, sample_ids=sample_ids)
    out = torch.where(m_full, fill, x_t[None])
    return like_input(out if has_p else out[0], x)
