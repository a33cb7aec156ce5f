"""The vision tower's patch embedding as one matrix product instead of a 3D convolution.

Qwen2.5-VL embeds each 2x14x14 pixel patch with ``nn.Conv3d(kernel_size=stride=(2, 14, 14))``: every output position
sees exactly one patch, so the convolution is a linear map of the flattened patch. torch's CPU convolution does not
know that and is several times slower than the matrix product, in the forward pass and the weight gradient alike.
:class:`PatchProjection` keeps the convolution's weight ``Parameter`` (same name, shape and values, so checkpoints,
exports, freezing and optimizers see no difference) and computes ``patches @ weight.view(out, -1).T``: equal to the
convolution to float rounding.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from chexone.model import transformers_compat as compat

log = logging.getLogger(__name__)


class PatchProjection(nn.Module):
    """Drop-in for a ``Conv3d`` whose kernel equals its stride over inputs of exactly one kernel each."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.kernel_size = tuple(conv.kernel_size)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = conv.weight  # the same Parameter object: state dict, optimizer and requires_grad unchanged
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, *self.kernel_size):
            raise ValueError(f"PatchProjection expects [N, {self.in_channels}, {', '.join(map(str, self.kernel_size))}]"
                             f" patches, got {list(x.shape)}")
        out = F.linear(x.reshape(x.shape[0], -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(x.shape[0], self.out_channels, 1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, patch={self.kernel_size} (a Conv3d computed as a matmul)"


def why_not_linear(conv: nn.Module) -> str | None:
    """Why this patch embedding cannot be a matrix product, or None."""
    if type(conv) is not nn.Conv3d:
        return f"it is a {type(conv).__name__}, not nn.Conv3d"
    if tuple(conv.kernel_size) != tuple(conv.stride):
        return f"kernel {tuple(conv.kernel_size)} differs from stride {tuple(conv.stride)}"
    if any(conv.padding) or any(d != 1 for d in conv.dilation) or conv.groups != 1 or conv.padding_mode != "zeros":
        return "it pads, dilates or groups"
    return None


def use_linear_patch_projection(model: nn.Module) -> bool:
    """Swap the vision tower's patch convolution for :class:`PatchProjection` in place; False (logged) where that is
    not exact or the model has no such convolution."""
    try:
        conv = compat.vision_patch_projection(model)
    except compat.ModelAPIError as err:
        log.info("patch embedding kept as it is: %s", err)
        return False
    if isinstance(conv, PatchProjection):
        return True
    problem = why_not_linear(conv)
    if problem is not None:
        log.info("patch embedding kept as a convolution: %s", problem)
        return False
    compat.set_vision_patch_projection(model, PatchProjection(conv))
    return True


__all__ = ["PatchProjection", "use_linear_patch_projection", "why_not_linear"]
