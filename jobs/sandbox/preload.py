"""Imported once by each fork server before it forks: pays torch's lazy imports up front.

The first optimizer built in a process imports torch._dynamo (seconds); doing it here
means every forked training child or spec check starts with it already loaded.
"""

from __future__ import annotations

import torch


def _warm() -> None:
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(layer.parameters())
    loss = torch.nn.functional.cross_entropy(layer(torch.zeros(1, 2)), torch.zeros(1).long())
    loss.backward()
    optimizer.step()


_warm()
