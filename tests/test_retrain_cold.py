"""The first retrain of a process pays no one-time import, and trains bit for bit as
``torch.optim`` does."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from quantus_roar.retrain.torch_retrainer import _SGD, _Adam

_SCHEDULES = {
    "onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                                total_steps=12),
    "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12),
    "none": lambda opt: None,
}


def _trained(opt_cls, schedule: str, **kwargs) -> list[torch.Tensor]:
    """The weights of a small network after 12 steps of ``opt_cls`` on fixed data."""
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(12, 8, 6, generator=g), torch.randint(0, 3, (12, 8), generator=g)
    opt = opt_cls(net.parameters(), **kwargs)
    sched = _SCHEDULES[schedule](opt)
    for xb, yb in zip(x, y, strict=True):
        for p in net.parameters():
            p.grad = None
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("schedule", list(_SCHEDULES))
@pytest.mark.parametrize("ours, theirs, kwargs", [
    (_Adam, torch.optim.Adam, {"lr": 0.05, "weight_decay": 1e-3}),
    (_SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    (_SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
])
def test_optimizers_equal_torch_bit_for_bit(ours, theirs, kwargs, schedule):
    mine = _trained(ours, schedule, **kwargs)
    reference = _trained(theirs, schedule, **kwargs)
    start = _trained(theirs, "none", **{**kwargs, "lr": 0.0})  # no step moves a weight
    assert all(not torch.equal(a, b) for a, b in zip(mine, start, strict=True))
    for a, b in zip(mine, reference, strict=True):
        assert torch.equal(a, b)


def test_steps_run_without_autograd():
    """The update must not be recorded by autograd (the wrapper it replaces disabled it)."""
    p = nn.Parameter(torch.ones(3))
    opt = _Adam([p], lr=0.1)
    (p ** 2).sum().backward()
    opt.step()
    assert p.grad_fn is None and p.is_leaf
    assert not torch.equal(p.detach(), torch.ones(3))


_FRESH = """
import json, sys, time
import numpy as np
from quantus_roar import SmallCNN, TorchRetrainer
rng = np.random.default_rng(0)
x = rng.random((96, 1, 8, 8), dtype=np.float32)
y = np.arange(96) % 10
for optimizer in ("adam", "sgd"):
    for schedule in ("onecycle", "cosine", "step", None):
        r = TorchRetrainer(SmallCNN(), optimizer=optimizer, schedule=schedule, epochs=1)
        r.fit(x, y, seed=0)
        r.fit_many([(x, y, x, y, s) for s in range(3)])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("torch._dynamo"))))
"""


def test_training_imports_no_dynamo():
    """torch.optim's wrappers import torch._dynamo (about 1.7 s) on first use; training
    with every optimizer and schedule, one model and many, must not."""
    done = subprocess.run([sys.executable, "-c", _FRESH], check=True, capture_output=True,
                          text=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
