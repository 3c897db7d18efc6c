"""ROAR, KAR and no-retrain deletion on the embedded digits, beside a Quantus metric.

Trains a SmallCNN on scikit-learn's digits, explains its predicted classes
with Gradient, Guided Backprop-SmoothGrad and the Random control, and
evaluates every estimator with ROAR, KAR and ROARNoRetrain in one
``quantus.evaluate`` call. Prints the table and writes ``roar_digits.png``
into the folder named by ``--out`` (default ``./roar_digits_output``).

Run: ``python examples/roar_digits.py [--out DIR]`` (about 25 s on two CPU cores).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import quantus
import torch

import quantus_roar as qr
from quantus_roar.explainers import predicted_classes
from quantus_roar.retrain import keep_freed_memory

ESTIMATORS = ("Gradient", "GuidedBackprop_SmoothGrad", "Random")
PERCENTAGES = (10, 30, 50, 70, 90)


def main(out_dir: Path = Path("roar_digits_output")) -> pd.DataFrame:
    torch.set_num_threads(2)
    keep_freed_memory()  # CPU training reuses freed blocks (docs/retraining.md)
    x_train, y_train, x_test, y_test = qr.load_digits_data(seed=0)
    x = np.concatenate([x_train, x_test])
    y = np.concatenate([y_train, y_test])
    retrainer = qr.TorchRetrainer(qr.SmallCNN())  # the recipe used for every retrain
    model = retrainer.fit(x_train, y_train, seed=0)
    print(f"original model: test accuracy {retrainer.score(model, x_test, y_test):.3f}")

    # quantus.evaluate would explain the labels; explain the predicted classes instead
    # (as Hooker et al.), and hand the attributions over as arrays.
    predicted = predicted_classes(model, x)
    attributions = {name: qr.explain(model, x, predicted, method=name) for name in ESTIMATORS}

    metrics = {
        "ROAR": qr.ROAR(PERCENTAGES, n_retrains=3, retrainer=retrainer),
        "KAR": qr.KAR(PERCENTAGES, n_retrains=3, retrainer=retrainer),
        "ROARNoRetrain": qr.ROARNoRetrain(PERCENTAGES),
    }
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qr.QuantusRoarWarning)
        results = quantus.evaluate(metrics=metrics, xai_methods=attributions, model=model,
                                   x_batch=x, y_batch=y)
    print(f"evaluated {len(ESTIMATORS)} estimators in {time.perf_counter() - start:.0f} s")

    # ROAR and ROARNoRetrain: % removed, unmodified at 0; KAR: % kept, unmodified at 100.
    table = pd.DataFrame([
        {"metric": metric, "estimator": est,
         **{("unmodified" if p in (0, 100) else f"{p}%"): acc for p, acc in curve.items()}}
        for est, per_metric in results.items() for metric, curve in per_metric.items()
    ]).set_index(["metric", "estimator"]).sort_index()
    table = table[["unmodified", *(f"{p}%" for p in PERCENTAGES)]]
    print(table.round(3).to_string())

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for ax, metric in zip(axes, metrics, strict=True):
        for est in ESTIMATORS:
            curve = results[est][metric]
            ps = sorted(curve)
            ax.plot(ps, [curve[p] for p in ps], marker="o", label=est)
        ax.set_title(metric)
        ax.set_xlabel("features kept (%)" if metric == "KAR" else "features removed (%)")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "roar_digits.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("roar_digits_output"),
                        help="folder for the figure (default ./roar_digits_output)")
    main(parser.parse_args().out)
