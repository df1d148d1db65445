"""PyTorch MPFN and MAML meta-train steps, written the ways PyTorch users write them.

- ``meta_loss``: the learn2learn / higher pattern. A Python loop over tasks; per task
  ``torch.autograd.grad(support_loss, params, create_graph=True)``, a functional forward
  (``torch.func.functional_call``) with the adapted parameters on the query set.
- ``make_func_meta_loss``: the ``torch.func`` pattern. ``torch.func.vmap`` over tasks of a task
  loss that takes ``torch.func.grad`` of the support loss (one inner SGD step; second order,
  since the outer ``.backward()`` differentiates through it) and evaluates the query loss at the
  adapted parameters with ``functional_call``. The GRU is an explicit cell loop
  (``TorchMPFN(..., cell=True)``): ``nn.GRU`` has no batching rule. The same function can be handed to
  ``torch.compile``.

``MetaStep`` turns either into an outer update (zero_grad, meta loss, ``.backward()``, optimizer
step). Imported only when the ``bench`` extra (torch) is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from dmeta.types import Params, TaskBatch

# dmeta parameter path -> (torch parameter name, transpose?)
_GRU_NAMES = {
    "w_x": ("weight_ih_l0", True),
    "w_h": ("weight_hh_l0", True),
    "b_x": ("bias_ih_l0", False),
    "b_h": ("bias_hh_l0", False),
}
_HEAD_NAMES = {"kernel": ("weight", True), "bias": ("bias", False)}


class GRUWeights(nn.Module):
    """One GRU layer's weights under ``nn.GRU``'s names and initialization, without its
    module: ``torch.compile`` refuses to trace through ``nn.GRU`` (Dynamo skips the frame
    and runs it eagerly), so the cell loop reads its weights from a plain module."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.hidden_size = hidden
        bound = hidden**-0.5
        for name, shape in (
            ("weight_ih_l0", (3 * hidden, n_features)),
            ("weight_hh_l0", (3 * hidden, hidden)),
            ("bias_ih_l0", (3 * hidden,)),
            ("bias_hh_l0", (3 * hidden,)),
        ):
            self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))


def _gru_cell_loop(gru: GRUWeights, x: torch.Tensor) -> torch.Tensor:
    """Last state of ``gru`` over ``x: f32[N, S, F]`` by a Python loop of GRU cells."""
    xp = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)
    h = x.new_zeros(x.shape[0], gru.hidden_size)
    for t in range(x.shape[1]):
        hp = F.linear(h, gru.weight_hh_l0, gru.bias_hh_l0)
        xr, xz, xn = xp[:, t].chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        h = (1.0 - z) * torch.tanh(xn + r * hn) + z * h
    return h


class TorchMPFN(nn.Module):
    """Same computation as ``dmeta.models.mpfn.MPFN`` (both branches): two GRUs + linear.

    ``cell=False``: ``nn.GRU`` modules (the fused kernel). ``cell=True``: the recurrence as an
    explicit loop of GRU cells over ``GRUWeights`` (same parameter names), traceable by
    ``torch.func`` transforms and ``torch.compile``.
    """

    def __init__(self, n_features: int, hidden: int, *, cell: bool = False):
        super().__init__()
        self.cell = cell
        if cell:
            self.gru_local = GRUWeights(n_features, hidden)
            self.gru_season = GRUWeights(n_features, hidden)
        else:
            self.gru_local = nn.GRU(n_features, hidden, batch_first=True)
            self.gru_season = nn.GRU(n_features, hidden, batch_first=True)
        self.head = nn.Linear(2 * hidden, 1)

    def _last_state(self, gru: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.cell:
            return _gru_cell_loop(gru, x)
        return gru(x)[1][0]

    def forward(self, x_local: torch.Tensor, x_season: torch.Tensor) -> torch.Tensor:
        """f32[N, S, F] x2 -> f32[N]; season state first, as in dmeta's ``MPFN.encode``."""
        h = [self._last_state(self.gru_season, x_season), self._last_state(self.gru_local, x_local)]
        return self.head(torch.cat(h, dim=-1))[:, 0]


def _name_map(theta: Params) -> dict[tuple[str, str], tuple[str, bool]]:
    """(dmeta module, leaf) -> (torch parameter name, transpose?)."""
    out = {}
    for module, leaves in theta.items():
        names = _HEAD_NAMES if module == "head" else _GRU_NAMES
        for leaf in leaves:
            name, transpose = names[leaf]
            out[(module, leaf)] = (f"{module}.{name}", transpose)
    return out


def from_dmeta(
    theta: Params, n_features: int, hidden: int, *, cell: bool = False, device: str = "cpu"
) -> TorchMPFN:
    """A ``TorchMPFN`` (cell loop if ``cell``) holding a copy of dmeta's ``theta``."""
    model = TorchMPFN(n_features, hidden, cell=cell)
    state = {}
    for (module, leaf), (name, transpose) in _name_map(theta).items():
        value = np.asarray(theta[module][leaf])
        state[name] = torch.from_numpy(np.array(value.T if transpose else value))
    model.load_state_dict(state)
    return model.to(device)


def grads_to_dmeta(theta: Params, grads: dict[str, torch.Tensor]) -> Params:
    """Torch gradients by parameter name -> numpy pytree shaped like dmeta's ``theta``."""
    out: dict = {module: {} for module in theta}
    for (module, leaf), (name, transpose) in _name_map(theta).items():
        value = grads[name].detach().cpu().numpy()
        out[module][leaf] = value.T if transpose else value
    return out


def batch_to_torch(batch: TaskBatch, device: str = "cpu") -> dict[str, tuple[torch.Tensor, ...]]:
    """``{"support" | "query": (x_local, x_season, y, mask)}`` with leading task axis T."""

    def split(s):
        arrays = (s.x_local, s.x_season, s.y, s.mask)
        return tuple(torch.from_numpy(np.array(a)).to(device) for a in arrays)

    return {"support": split(batch.support), "query": split(batch.query)}


def masked_mse(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real samples (same formula as ``dmeta.models.mpfn.masked_mse``)."""
    return torch.sum(mask * (pred - y) ** 2) / torch.clamp(torch.sum(mask), min=1.0)


def _no_cudnn():
    """cuDNN's RNN has no double backward; on CUDA, ``nn.GRU`` falls back to its native kernels."""
    return torch.backends.cudnn.flags(enabled=False)


def meta_loss(
    model: TorchMPFN, batch: dict, *, step_size: float, first_order: bool
) -> torch.Tensor:
    """Mean over tasks of the query loss after one inner SGD step on the support set."""
    with _no_cudnn() if batch["support"][0].is_cuda else contextlib.nullcontext():
        return _loop_meta_loss(model, batch, step_size=step_size, first_order=first_order)


def _loop_meta_loss(model, batch, *, step_size, first_order):
    names, params = zip(*model.named_parameters())
    x_s, xs_s, y_s, m_s = batch["support"]
    x_q, xs_q, y_q, m_q = batch["query"]
    total = 0.0
    for t in range(x_s.shape[0]):
        support = masked_mse(model(x_s[t], xs_s[t]), y_s[t], m_s[t])
        grads = torch.autograd.grad(support, params, create_graph=not first_order)
        adapted = {n: p - step_size * g for n, p, g in zip(names, params, grads)}
        pred = functional_call(model, adapted, (x_q[t], xs_q[t]))
        total = total + masked_mse(pred, y_q[t], m_q[t])
    return total / x_s.shape[0]


def make_func_meta_loss(
    model: TorchMPFN, *, step_size: float, first_order: bool = False
) -> Callable[[dict[str, torch.Tensor], dict], torch.Tensor]:
    """``meta_loss(params, batch)``: mean over tasks (``torch.func.vmap``) of the query loss at
    ``params - step_size * torch.func.grad(support loss)``, ``model`` run by ``functional_call``.

    ``params`` is ``dict(model.named_parameters())``; ``.backward()`` on the result gives the
    second-order meta-gradient in their ``.grad`` (first order if ``first_order``: the inner
    gradient is detached). ``model`` must step its GRUs as a cell loop (``TorchMPFN(..., cell=True)``).
    """

    def loss_at(params, x_local, x_season, y, mask):
        return masked_mse(functional_call(model, params, (x_local, x_season)), y, mask)

    def task_loss(params, support, query):
        grads = torch.func.grad(loss_at)(params, *support)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        adapted = {n: p - step_size * grads[n] for n, p in params.items()}
        return loss_at(adapted, *query)

    over_tasks = torch.func.vmap(task_loss, in_dims=(None, 0, 0))

    def func_meta_loss(params: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        return over_tasks(params, batch["support"], batch["query"]).mean()

    return func_meta_loss


class MetaStep:
    """One outer update of ``model``: zero_grad, ``loss_fn(batch)``, ``.backward()``, optimizer
    step. Callable as ``step(batch) -> loss``; ``grads(batch)`` does the same up to the
    backward and returns the meta-gradient by parameter name (finish that step with ``update``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[dict], torch.Tensor],
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn

    def _backward(self, batch: dict) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        loss.backward()
        return loss

    def grads(self, batch: dict) -> dict[str, torch.Tensor]:
        """The meta-gradient of ``loss_fn(batch)`` (no optimizer step), synchronized."""
        self._backward(batch)
        grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}
        synchronize(batch)
        return grads

    def update(self, batch: dict) -> None:
        """The optimizer step on the gradients left by ``grads``."""
        self.optimizer.step()
        synchronize(batch)

    def __call__(self, batch: dict) -> float:
        loss = self._backward(batch)
        self.optimizer.step()
        synchronize(batch)
        return float(loss.detach())


def synchronize(batch: dict) -> None:
    """Waits for the CUDA stream when the batch lives on a GPU (no-op on CPU)."""
    if batch["support"][0].is_cuda:
        torch.cuda.synchronize()


def make_peer_step(
    kind: str,
    model: TorchMPFN,
    *,
    step_size: float,
    learning_rate: float,
    first_order: bool = False,
) -> MetaStep:
    """A ``MetaStep`` with Adam for one PyTorch peer.

    ``kind``: ``"loop"`` / ``"cell_loop"`` (``meta_loss``; the model decides ``nn.GRU`` or the
    cell loop), ``"func"`` (``make_func_meta_loss``, eager) or ``"func_compile"`` (the same under
    ``torch.compile``; it compiles on the first call).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    if kind in ("loop", "cell_loop"):

        def loss_fn(batch):
            return meta_loss(model, batch, step_size=step_size, first_order=first_order)

        return MetaStep(model, optimizer, loss_fn)
    if kind not in ("func", "func_compile"):
        raise ValueError(f"unknown torch peer {kind!r}")
    if not model.cell:
        raise TypeError("the torch.func peers need the cell-loop model (nn.GRU has no vmap rule)")
    func_loss = make_func_meta_loss(model, step_size=step_size, first_order=first_order)
    if kind == "func_compile":
        func_loss = torch.compile(func_loss)
    params = dict(model.named_parameters())
    return MetaStep(model, optimizer, lambda batch: func_loss(params, batch))
