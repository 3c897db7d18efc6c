"""Agreement of the Quantus port (ROAR, KAR, DataRandomisation) with quantus_roar.

Run by ``upstream/check`` (step 7) from the patched tree, or by hand:

    cd <quantus tree> && OMP_NUM_THREADS=1 PYTHONPATH=$PWD python <repo>/upstream/agreement.py

Every check runs both implementations on the same inputs, attributions, seeds and training
code, and compares their results. The script prints both sides and a summary, and exits
non-zero on any disagreement (exit 2), or when a check could not run because the tree lacks
the metric (exit 3: e.g. DataRandomisation on a tree with patch 4 only).

Checks
------
masks             the removal masks of the port (ROAR/KAR.removal_masks) against
                  quantus_roar.removal.removal_masks: orders, granularities, reductions,
                  images / time series / tabular, 1 and 3 channels, heavy ties, all-zero maps,
                  arbitrary sample ids and seeds -- bit-for-bit equal.
roar_kar_*        ROAR and KAR on MNIST digits of the Quantus test assets with LeNet, trained by one
                  shared retrainer (quantus_roar.TorchRetrainer, or the port's TorchRetrainer) that
                  only exposes fit/score, so both sides train one model at a time through the same
                  code: the returned {percentage: mean accuracy} dicts and every per-retrain
                  accuracy must be exactly equal, and both sides must have trained on byte-identical
                  (inputs, labels, seed) triples. Variants: explicit test set; stratified split of
                  x_batch; attributions computed by explain_func for the predicted class.
data_randomisation
                  The port's DataRandomisation against quantus_roar.DataRandomisation (step
                  "random_labels"), same permutation, training seed and retrainer. Compared with a
                  tolerance of 1e-9, not bit-for-bit: the port uses Quantus' correlation_spearman
                  (scipy) and quantus_roar its own torch Spearman; the ranks are the same, the float
                  arithmetic of the correlation is not. Semantics that differ by default
                  and are aligned here: quantus_roar explains the predicted class
                  (target="label" here; the port explains y, like MPRT), and quantus_roar
                  holds out a stratified test split when no x_test is given (an explicit
                  x_test is passed here); the port does not train quantus_roar's
                  "floor"/"ceiling" references.
road_vs_roar_no_retrain
                  The patched quantus.ROAD on RGB images (3-channel and 1-channel attributions,
                  several batches) against quantus_roar.ROARNoRetrain with ROAD's ranking
                  (channel sum) and fill (noisy linear, no noise): exactly equal accuracies.
"""

import hashlib
import os
import sys
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

import quantus  # noqa: E402
from quantus.helpers.model.models import LeNet  # noqa: E402
from quantus.metrics.faithfulness.roar import KAR, ROAR  # noqa: E402

import quantus_roar  # noqa: E402

RESULTS = []  # (name, ok, detail)
SKIPPED = []  # names of checks that could not run in this tree


def record(name, ok, detail=""):
    RESULTS.append((name, ok, detail))
    print(f"[{'OK' if ok else 'FAIL'}] {name} {detail}")


# --------------------------------------------------------------------------- data


def mnist(tree):
    """124 MNIST digits of the Quantus test assets (float32) and the trained LeNet."""
    x = (
        np.loadtxt(os.path.join(tree, "tests/assets/mnist_x"))
        .astype(np.float32)
        .reshape(124, 1, 28, 28)
    )
    y = np.loadtxt(os.path.join(tree, "tests/assets/mnist_y")).astype(np.int64)
    model = LeNet()
    model.load_state_dict(torch.load(os.path.join(tree, "tests/assets/mnist"), map_location="cpu"))
    model.eval()
    return x, y, model


def saliency(model, x, targets):
    a = quantus.explain(model=model, inputs=x, targets=targets, method="Saliency")
    return np.asarray(a, dtype=np.float32)


class SharedRetrainer:
    """Only fit/score, so quantus_roar trains one model at a time (no ensembles), exactly like the
    port; records a fingerprint of every training call to compare what each side trained on."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def fit(self, x, y, seed):
        x_t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x))
        y_t = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).long()
        digest = hashlib.sha1(
            x_t.contiguous().numpy().tobytes() + y_t.numpy().tobytes()
        ).hexdigest()
        self.calls.append((int(seed), str(x_t.dtype), tuple(x_t.shape), digest))
        return self.inner.fit(x_t, y_t, seed=seed)

    def score(self, model, x, y):
        x_t = torch.as_tensor(np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x))
        y_t = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).long()
        return self.inner.score(model, x_t, y_t)


def roar_retrainer():
    return quantus_roar.TorchRetrainer(
        LeNet(), epochs=8, batch_size=16, lr=3e-3, optimizer="adam", schedule=None
    )


def roar_retrainer_random_labels():
    """Long enough for LeNet to memorise 100 permuted labels (training accuracy ~0.99)."""
    return quantus_roar.TorchRetrainer(
        LeNet(), epochs=40, batch_size=10, lr=1e-3, optimizer="adam", schedule=None
    )


def port_retrainer():
    return quantus.TorchRetrainer(LeNet(), epochs=8, batch_size=16, lr=3e-3, optimizer="adam")


# --------------------------------------------------------------------------- checks


def check_masks():
    from quantus_roar.removal import removal_masks

    rng = np.random.default_rng(0)
    n_cases = n_bad = 0
    for trial in range(24):
        c = (1, 3)[trial % 2]
        shape = [(6, c, 6, 5), (6, c, 11), (6, 9)][trial % 3]
        a = rng.normal(size=shape).astype(np.float32)
        if trial % 4 == 0:
            a = np.round(a)  # many ties
        if trial % 5 == 0:
            a[:] = 0.0  # every feature tied
        ids = rng.integers(0, 10**6, size=shape[0])
        for order, cls in (("remove_top", ROAR), ("keep_top", KAR)):
            for granularity in ("pixel", "value"):
                for reduce in ("sum_abs", "sum", "max_abs", "l2"):
                    seed = int(rng.integers(0, 2**40))
                    ps = [5, 12.5, 50, 70, 100]
                    metric = cls(
                        percentages=ps,
                        granularity=granularity,
                        reduce=reduce,
                        seed=seed,
                        disable_warnings=True,
                    )
                    mine = metric.removal_masks(a, sample_ids=ids)
                    a_t = torch.from_numpy(a)
                    if len(shape) == 3:  # quantus_roar takes time series as height-1 images
                        a_t = a_t.unsqueeze(2)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        theirs = removal_masks(
                            a_t,
                            ps,
                            order=order,
                            granularity=granularity,
                            reduce=reduce,
                            seed=seed,
                            sample_ids=torch.from_numpy(ids),
                        ).numpy()
                    if len(shape) == 3:
                        theirs = theirs[:, :, :, 0]
                    n_cases += 1
                    if mine.shape != theirs.shape[:1] + tuple(mine.shape[1:]) or not np.array_equal(
                        np.broadcast_to(mine, theirs.shape), theirs
                    ):
                        n_bad += 1
                        print("  mask mismatch:", shape, order, granularity, reduce)
    record("masks", n_bad == 0, f"({n_cases - n_bad}/{n_cases} configurations bit-identical)")


def compare_curves(
    name, port_metric, roar_metric, port_retrainer_, roar_retrainer_, port_call, roar_call
):
    t0 = time.time()
    port = port_metric(**port_call)
    t1 = time.time()
    theirs = roar_metric(**roar_call)
    t2 = time.time()
    theirs = {k: float(v) for k, v in theirs.items()}
    per_retrain = {
        k: [float(v) for v in g["accuracy"]] for k, g in roar_metric.results.groupby("percentage")
    }
    print(f"  {name} port          ({t1 - t0:.1f}s): {port}")
    print(f"  {name} quantus_roar  ({t2 - t1:.1f}s): {theirs}")
    print(f"  {name} per retrain port: {port_metric.accuracies}")
    print(f"  {name} per retrain q_r : {per_retrain}")
    same_keys = list(port) == list(theirs)
    same_values = same_keys and all(port[k] == theirs[k] for k in port)
    same_each = {k: list(v) for k, v in port_metric.accuracies.items()} == per_retrain
    same_data = sorted(port_retrainer_.calls) == sorted(roar_retrainer_.calls)
    ok = same_keys and same_values and same_each and same_data
    record(
        name,
        ok,
        f"(keys {same_keys}, means {same_values}, per-retrain {same_each}, "
        f"training data+seeds {same_data}, {len(port_retrainer_.calls)} fits each)",
    )


def check_roar_kar(tree):
    x, y, model = mnist(tree)
    x_tr, y_tr, x_te, y_te = x[:100], y[:100], x[100:], y[100:]
    a_tr, a_te = saliency(model, x_tr, y_tr), saliency(model, x_te, y_te)
    common = dict(n_retrains=2, seed=3, abs=False, normalise=False, disable_warnings=True)
    for cls_port, cls_roar, ps in (
        (ROAR, quantus_roar.ROAR, (10, 50, 90)),
        (KAR, quantus_roar.KAR, (10, 50, 100)),
    ):
        label = cls_port.__name__
        # 1. explicit test set, attributions given, quantus_roar's TorchRetrainer shared
        for which, make in (
            ("quantus_roar.TorchRetrainer", roar_retrainer),
            ("port TorchRetrainer", port_retrainer),
        ):
            r_port, r_roar = SharedRetrainer(make()), SharedRetrainer(make())
            call = dict(
                model=model,
                x_batch=x_tr,
                y_batch=y_tr,
                a_batch=a_tr,
                x_test=x_te,
                y_test=y_te,
                a_test=a_te,
            )
            compare_curves(
                f"{label.lower()}_test_set [{which}]",
                cls_port(percentages=ps, retrainer=r_port, **common),
                cls_roar(percentages=ps, retrainer=r_roar, **common),
                r_port,
                r_roar,
                call,
                call,
            )
        # 2. no test set: the stratified split of x_batch, attributions given
        r_port, r_roar = SharedRetrainer(roar_retrainer()), SharedRetrainer(roar_retrainer())
        call = dict(model=model, x_batch=x, y_batch=y, a_batch=saliency(model, x, y))
        compare_curves(
            f"{label.lower()}_split",
            cls_port(percentages=ps, retrainer=r_port, test_size=0.25, **common),
            cls_roar(percentages=ps, retrainer=r_roar, test_size=0.25, **common),
            r_port,
            r_roar,
            call,
            call,
        )
        # 3. attributions computed by explain_func for the model's predicted class
        r_port, r_roar = SharedRetrainer(roar_retrainer()), SharedRetrainer(roar_retrainer())
        call = dict(
            model=model,
            x_batch=x_tr,
            y_batch=y_tr,
            x_test=x_te,
            y_test=y_te,
            explain_func=quantus.explain,
            explain_func_kwargs={"method": "Saliency"},
        )
        compare_curves(
            f"{label.lower()}_explain_func_predicted",
            cls_port(percentages=ps, retrainer=r_port, target="predicted", **common),
            cls_roar(percentages=ps, retrainer=r_roar, target="predicted", **common),
            r_port,
            r_roar,
            call,
            call,
        )


def check_data_randomisation(tree):
    try:
        from quantus.metrics.randomisation import DataRandomisation
    except ImportError:
        print("[SKIPPED] data_randomisation (this tree has no quantus DataRandomisation)")
        SKIPPED.append("data_randomisation")
        return
    x, y, model = mnist(tree)
    x_tr, y_tr, x_te, y_te = x[:100], y[:100], x[100:], y[100:]
    a_te = saliency(model, x_te, y_te)
    for seed, preprocess in (
        (0, dict(abs=False, normalise=False)),
        (11, dict(abs=True, normalise=True)),
    ):
        r_port = SharedRetrainer(roar_retrainer_random_labels())
        r_roar = SharedRetrainer(roar_retrainer_random_labels())
        port_metric = DataRandomisation(
            retrainer=r_port, seed=seed, disable_warnings=True, **preprocess
        )
        roar_metric = quantus_roar.DataRandomisation(
            retrainer=r_roar,
            seed=seed,
            similarity="spearman",
            target="label",
            disable_warnings=True,
            **preprocess,
        )
        call = dict(
            model=model,
            x_batch=x_tr,
            y_batch=y_tr,
            x_test=x_te,
            y_test=y_te,
            a_test=a_te,
            explain_func=quantus.explain,
            explain_func_kwargs={"method": "Saliency"},
        )
        port = np.asarray(port_metric(**call), dtype=np.float64)
        roar_metric(**call)
        theirs = np.asarray(roar_metric.scores["spearman"]["random_labels"], dtype=np.float64)
        print(
            f"  data_randomisation seed={seed} {preprocess} port        : "
            f"{np.round(port, 6).tolist()}"
        )
        print(
            f"  data_randomisation seed={seed} {preprocess} quantus_roar: "
            f"{np.round(theirs, 6).tolist()}"
        )
        print(
            f"  random-label model train accuracy port {port_metric.train_accuracy:.4f}, "
            f"quantus_roar {roar_metric.train_accuracy:.4f}"
        )
        # quantus_roar also trains its "ceiling" model (true labels, another seed): an extra fit.
        random_label_fit = [c for c in r_roar.calls if c in r_port.calls]
        same_fit = len(r_port.calls) == 1 and random_label_fit == r_port.calls
        diff = (
            float(np.nanmax(np.abs(port - theirs))) if port.shape == theirs.shape else float("inf")
        )
        same_nan = port.shape == theirs.shape and bool(
            np.array_equal(np.isnan(port), np.isnan(theirs))
        )
        ok = (
            same_fit
            and same_nan
            and diff <= 1e-9
            and port_metric.train_accuracy == roar_metric.train_accuracy
        )
        record(
            f"data_randomisation_seed{seed}_abs{preprocess['abs']}",
            ok,
            f"(max |diff| {diff:.2e}, same permuted-label training data+seed {same_fit})",
        )


def check_road_vs_roar_no_retrain(tree):
    """Patched quantus.ROAD equals quantus_roar.ROARNoRetrain with ROAD's fill (noisy linear
    imputation without noise) and ranking (channel sum) on RGB, with 3-channel and 1-channel
    attributions, over several batches. Percentages are whole numbers of the 100 pixels of
    a 10 x 10 image, where ROAD's floor and quantus_roar's rounding agree."""
    import torch

    if not hasattr(quantus, "ROAD"):
        SKIPPED.append("ROAD vs ROARNoRetrain")
        return
    gen = torch.Generator().manual_seed(0)
    model = quantus_roar.SmallCNN(in_channels=3, n_classes=4, image_size=10).eval()
    x = torch.rand(23, 3, 10, 10, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1).numpy()  # every sample right before removal
    x = x.numpy()
    ps = [10, 30, 50, 70, 90]
    for channels in (3, 1):
        a = torch.randn(23, channels, 10, 10, generator=gen).numpy()
        try:
            road = quantus.ROAD(
                noise=0.0, percentages=ps, abs=False, normalise=False, disable_warnings=True
            )
            theirs = road(model=model, x_batch=x, y_batch=y, a_batch=a, batch_size=7, device="cpu")
        except Exception as err:  # the unpatched ROAD raises IndexError on RGB
            record(
                f"ROAD on RGB, {channels}-channel attributions",
                False,
                f"{type(err).__name__}: {err}",
            )
            continue
        ours = quantus_roar.ROARNoRetrain(
            ps,
            reduce="sum",
            imputer="noisy_linear",
            imputer_kwargs={"noise": 0.0},
            disable_warnings=True,
        )(model, x, y, a, batch_size=7)
        got = [float(theirs[p]) for p in ps]
        want = [float(ours[p]) for p in ps]
        print(f"  ROAD ({channels}-channel a): {got}\n  ROARNoRetrain:           {want}")
        record(
            f"ROAD on RGB equals ROARNoRetrain, {channels}-channel attributions",
            got == want,
            "" if got == want else f"{got} != {want}",
        )


def main():
    tree = os.path.dirname(os.path.dirname(os.path.abspath(quantus.__file__)))
    print(f"quantus from {quantus.__file__}\nquantus_roar from {quantus_roar.__file__}\n")
    check_masks()
    check_roar_kar(tree)
    check_data_randomisation(tree)
    check_road_vs_roar_no_retrain(tree)
    print("\nSummary")
    for name, ok, _detail in RESULTS:
        print(f"  {'OK  ' if ok else 'FAIL'} {name}")
    for name in SKIPPED:
        print(f"  SKIP {name}")
    failed = [r for r in RESULTS if not r[1]]
    print(
        f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks agree"
        + (f", {len(SKIPPED)} skipped ({', '.join(SKIPPED)})." if SKIPPED else ".")
    )
    if failed:
        return 2
    return 3 if SKIPPED else 0


if __name__ == "__main__":
    sys.exit(main())
