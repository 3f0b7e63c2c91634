"""An exponential moving average of a model's weights (as timm's ModelEmaV3 and YOLO keep one).

Training updates it after every optimisation step; validation scores it and the run keeps it as its
best weights, so what a run ships is the average of its last few hundred steps rather than the weights of
one noisy step. It starts with a short ramp (the decay grows from 0.1 towards its value over the first
steps), so an early average does not hold on to the random decoder it began with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class WeightAverage:
    """The moving average of a model's floating-point weights and buffers; integer buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay {decay} must lie between 0 and 1")
        self.decay = decay
        self.updates = 0
        self.names = list(model.state_dict())
        self.shadow = [v.detach().to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                       for v in model.state_dict().values()]

    def current_decay(self) -> float:
        """Return the decay of the next update: (1 + n) / (10 + n) until it reaches the set decay."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's weights after an optimisation step."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        floats, targets = [], []
        for shadow, value in zip(self.shadow, model.state_dict().values()):
            if shadow.is_floating_point():
                floats.append(shadow)
                targets.append(value.detach().float())
            else:
                shadow.copy_(value)
        torch._foreach_lerp_(floats, targets, weight)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; afterwards its own again."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged(own))
        try:
            yield
        finally:
            model.load_state_dict(own)

    def averaged(self, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the average as a state dict with the dtypes and devices of `like`."""
        return {k: s.to(like[k].dtype) for k, s in zip(self.names, self.shadow)}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {k: s.detach().to("cpu", copy=True) for k, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's average (the decay stays the one this run was configured with)."""
        self.updates = int(state["updates"])
        shadow = state["shadow"]
        missing = [k for k in self.names if k not in shadow]
        if missing:
            raise KeyError(f"the checkpoint's weight average lacks {missing[0]}")
        self.shadow = [shadow[k].to(s.device, s.dtype) for k, s in zip(self.names, self.shadow)]
