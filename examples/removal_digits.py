"""Remove the most important pixels of handwritten digits and look at the result.

Attributions come from a logistic regression (coefficient x input for the
predicted class), so the example needs nothing but scikit-learn's bundled
digits. Writes ``removal_digits.png`` into the folder named by ``--out``
(default ``./removal_digits_output``).

Run: ``python examples/removal_digits.py [--out DIR]`` (about 15 s on two CPU cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from quantus_roar import channel_means, impute, removal_masks

PERCENTAGES = (10, 30, 50, 70, 90)


def main(out_dir: Path = Path("removal_digits_output")) -> Path:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    y = digits.target
    clf = LogisticRegression(max_iter=2000).fit(x.reshape(len(x), -1), y)
    predicted = clf.predict(x.reshape(len(x), -1))
    a = (clf.coef_[predicted].reshape(x.shape) * x).astype(np.float32)

    for order in ("remove_top", "keep_top"):
        masks = removal_masks(a, PERCENTAGES, order=order, seed=0)
        x_removed = impute(x, masks, "channel_mean", stats=channel_means(x))
        acc = [(clf.predict(xr.reshape(len(x), -1)) == y).mean() for xr in x_removed]
        label = "removed" if order == "remove_top" else "kept"
        print(f"{order:>10}: accuracy of the unchanged model with p% most important {label}: "
              + ", ".join(f"{p}%={v:.3f}" for p, v in zip(PERCENTAGES, acc, strict=True)))

    masks = removal_masks(a[:4], PERCENTAGES, order="remove_top", seed=0)
    x_removed = impute(x[:4], masks, "channel_mean", stats=channel_means(x))
    fig, axes = plt.subplots(4, len(PERCENTAGES) + 1, figsize=(8, 5.5))
    for i in range(4):
        axes[i, 0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        for j, p in enumerate(PERCENTAGES):
            axes[i, j + 1].imshow(x_removed[j, i, 0], cmap="gray", vmin=0, vmax=1)
            axes[0, j + 1].set_title(f"{p}% removed")
    axes[0, 0].set_title("original")
    for ax in axes.flat:
        ax.set_axis_off()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "removal_digits.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"figure: {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("removal_digits_output"),
                        help="folder for the figure (default ./removal_digits_output)")
    main(parser.parse_args().out)
