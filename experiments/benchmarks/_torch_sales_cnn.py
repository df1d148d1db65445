"""PyTorch sales CNN (Zhao & Wang), written the way a PyTorch user writes it, and its train step.

Each order's per-indicator wide convolutions are one grouped ``nn.Conv1d`` (``groups = d``,
channels ordered ``(indicator, map)``, zero padding ``m - 1`` on both sides), then ReLU and
``nn.MaxPool1d(k, ceil_mode=True)``; flatten, dropout, dense with ReLU and a linear output,
trained with ``torch.optim.Adamax``. ``from_dmeta`` copies the weights of a
``dmeta.sales_cnn.model.SalesCNN`` so both compute the same function. Imported only when the
``bench`` extra (torch) is installed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dmeta.types import Params


class TorchSalesCNN(nn.Module):
    """Same computation as ``dmeta.sales_cnn.model.SalesCNN``: f32[B, 4, D, T] -> f32[B]."""

    def __init__(
        self,
        n_indicators: int,
        length: int,
        *,
        n_inputs: int,
        orders: tuple[tuple[int, int], ...],
        maps: int,
        hidden: int,
        rate: float,
    ):
        super().__init__()
        d = n_indicators
        widths = (n_inputs,) + (maps,) * len(orders)
        layers: list[nn.Module] = []
        for (m, k), k_in, k_out in zip(orders, widths[:-1], widths[1:], strict=True):
            layers += [
                nn.Conv1d(d * k_in, d * k_out, m, padding=m - 1, groups=d),
                nn.ReLU(),
                nn.MaxPool1d(k, ceil_mode=True),
            ]
            length = -(-(length + m - 1) // k)
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(rate),
            nn.Linear(d * maps * length, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: f32[B, 4, D, T] -> f32[B]; channels regrouped by indicator row first."""
        b, n_in, d, t = x.shape
        x = x.transpose(1, 2).reshape(b, d * n_in, t)
        return self.head(self.convs(x))[:, 0]


def from_dmeta(params: Params, model: TorchSalesCNN) -> TorchSalesCNN:
    """Copies ``split_model(SalesCNN)`` parameters into ``model`` (in place) and returns it.

    dmeta's conv kernel ``[D, m, K_in, K_out]`` becomes the grouped weight
    ``[D * K_out, K_in, m]``; the dense kernel's rows are reordered from dmeta's flatten order
    ``(d, s, k)`` to torch's ``(d, k, s)``.
    """
    convs = [c for c in model.convs if isinstance(c, nn.Conv1d)]

    def put(tensor: torch.Tensor, array) -> None:
        tensor.copy_(torch.tensor(np.asarray(array, np.float32)))

    with torch.no_grad():
        for i, conv in enumerate(convs):
            p = params["convs"][i]
            d, m, k_in, k_out = p["kernel"].shape
            put(conv.weight, np.asarray(p["kernel"]).transpose(0, 3, 2, 1).reshape(-1, k_in, m))
            put(conv.bias, np.asarray(p["bias"]).reshape(-1))
        dense, out = model.head[2], model.head[4]
        kernel = np.asarray(params["dense"]["kernel"]).reshape(d, -1, k_out, dense.out_features)
        put(dense.weight, kernel.transpose(0, 2, 1, 3).reshape(-1, dense.out_features).T)
        put(dense.bias, params["dense"]["bias"])
        put(out.weight, np.asarray(params["out"]["kernel"]).T)
        put(out.bias, params["out"]["bias"])
    return model


def make_train_step(
    model: TorchSalesCNN,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    compile: bool = False,
):
    """``step(x, y, w, n) -> loss``: one optimizer step on ``batch_size`` rows drawn uniformly.

    Same work as ``dmeta.sales_cnn.train.make_train_step``: draw, dropout forward, the weighted
    MSE of eq. 19, backward, update. With ``compile``, the loss (gather, forward, weighted MSE)
    runs under ``torch.compile`` (forward and backward compiled on the first call); the draw and
    the optimizer step stay eager. ``loss.item()`` synchronizes a GPU.
    """
    model.train()

    def batch_loss(x, y, w, idx):
        pred = model(x[idx])
        wb = w[idx]
        return torch.sum(wb * (y[idx] - pred) ** 2) / torch.sum(wb)

    loss_fn = torch.compile(batch_loss) if compile else batch_loss

    def step(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, n: int) -> float:
        idx = torch.randint(0, n, (batch_size,), device=x.device)
        loss = loss_fn(x, y, w, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step
