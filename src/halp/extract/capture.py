"""Forward hooks that keep only what was asked for, from the first call only, and always come off."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

# module output -> the small thing worth keeping
Reducer = Callable[[Any], Any]


def at_positions(rows: Tensor, columns: Tensor) -> Reducer:
    """A reducer keeping hidden states [B, S, H] (or a block's output tuple, which holds them first) at
    (rows, columns) only, as float32 on the CPU: blocks may sit on different devices."""

    def reduce(output: Any) -> Tensor:
        hidden = output[0] if isinstance(output, tuple) else output
        return hidden[rows.to(hidden.device), columns.to(hidden.device)].float().cpu()

    return reduce


@contextmanager
def capture_first_call(
    hooks: Mapping[str, tuple[nn.Module, Reducer]],
    inputs: Mapping[str, tuple[nn.Module, Reducer]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Hook each named module; its first forward inside the block stores `reducer(output)` (for `inputs`:
    `reducer(first positional or `hidden_states` argument)`, what enters the module).

    During `generate` the first call of every module is the prefill over the whole prompt, so the
    decode steps that follow are ignored. Hooks are removed on exit, also on error.
    """
    captured: dict[str, Any] = {}

    def make_hook(name: str, reducer: Reducer):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if name not in captured:
                captured[name] = reducer(output)

        return hook

    def make_input_hook(name: str, reducer: Reducer):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in captured:
                captured[name] = reducer(args[0] if args else kwargs["hidden_states"])

        return hook

    handles = [
        module.register_forward_hook(make_hook(name, reducer)) for name, (module, reducer) in hooks.items()
    ] + [
        module.register_forward_pre_hook(make_input_hook(name, reducer), with_kwargs=True)
        for name, (module, reducer) in (inputs or {}).items()
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
