"""Turn an NNX module into a pure ``apply(params, *args)`` over a plain dict of arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from dmeta.types import Params


def split_params(model: nnx.Module, method: str = "__call__") -> tuple[Callable[..., Any], Params]:
    """Splits ``model`` once into a pure function and its parameters.

    Args:
      model: an NNX module whose only state is ``nnx.Param`` variables.
      method: name of the module method the returned function calls.

    Returns:
      ``(apply, params)`` where ``params`` is a nested dict of arrays and
      ``apply(params, *args, **kwargs)`` runs ``getattr(model, method)`` with them.
    """
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)

    def apply(params: Params, *args: Any, **kwargs: Any) -> Any:
        return getattr(nnx.merge(graphdef, params), method)(*args, **kwargs)

    return apply, params
