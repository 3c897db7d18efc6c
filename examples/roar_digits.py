"""ROAR, KAR and no-retrain deletion on the embedded digits, beside a Quantus metric.

Trains a SmallCNN on scikit-learn's digits, explains it with Gradient,
Guided Backprop-SmoothGrad and the Random control, and evaluates every
estimator with ROAR, KAR and ROARNoRetrain in one ``quantus.evaluate`` call.
Prints the table and writes ``examples/output/roar_digits.png``.

Run: ``python examples/roar_digits.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

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

ESTIMATORS = ("Gradient", "GuidedBackprop_SmoothGrad", "Random")
PERCENTAGES = (10, 30, 50, 70, 90)


def main(out_dir: Path = Path(__file__).parent / "output") -> pd.DataFrame:
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = qr.load_digits_data(seed=0)
    x = np.concatenate([x_train, x_test])
    y = np.concatenate([y_train, y_test])
    retrainer = qr.TorchRetrainer(qr.SmallCNN())  # the recipe used for every retrain
    model = retrainer.fit(x_train, y_train, seed=0)
    print(f"original model: test accuracy {retrainer.score(model, x_test, y_test):.3f}")

    metrics = {
        "ROAR": qr.ROAR(PERCENTAGES, n_retrains=3, retrainer=retrainer),
        "KAR": qr.KAR(PERCENTAGES, n_retrains=3, retrainer=retrainer),
        "ROARNoRetrain": qr.ROARNoRetrain(PERCENTAGES),
    }
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", qr.QuantusRoarWarning)
        results = quantus.evaluate(
            metrics=metrics, xai_methods=dict.fromkeys(ESTIMATORS, qr.explain),
            model=model, x_batch=x, y_batch=y, explain_func_kwargs={},
        )
    print(f"evaluated {len(ESTIMATORS)} estimators in {time.perf_counter() - start:.0f} s")

    table = pd.DataFrame([
        {"estimator": est, "metric": metric, **{f"{p}%": acc for p, acc in curve.items()}}
        for est, per_metric in results.items() for metric, curve in per_metric.items()
    ]).set_index(["metric", "estimator"]).sort_index()
    print(table.round(3).to_string())

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    for ax, metric in zip(axes, metrics, strict=True):
        for est in ESTIMATORS:
            curve = results[est][metric]
            ax.plot(list(curve), list(curve.values()), marker="o", label=est)
        ax.set_title(metric)
        ax.set_xlabel("% removed" if metric != "KAR" else "% kept")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roar_digits.png", dpi=120)
    print(f"wrote {out_dir / 'roar_digits.png'}")
    return table


if __name__ == "__main__":
    main()
