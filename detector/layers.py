"""Building blocks shared by the backbones (:mod:`detector.backbones`) and the RetinaFace neck.

* :func:`conv_bn`: biubug6's ``Sequential(conv, bn[, act])`` block (its child names ``0``, ``1``
  are part of the checkpoint keys).
* :class:`StagedBackbone`: a trunk whose named children run in order and whose ``return_layers``
  outputs feed the FPN.
* :func:`fold_conv_bn`: one Conv2d -> BatchNorm2d pair folded into a single conv (inference only).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["StagedBackbone", "conv_bn", "fold_conv_bn"]


def conv_bn(inp: int, oup: int, *, stride: int = 1, leaky: float | None = 0.0, kernel: int = 3,
            groups: int = 1) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias, "same" padding), BatchNorm, then LeakyReLU(``leaky``)
    (ReLU when ``leaky == 0``, no activation when ``None``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True) if leaky > 0 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class StagedBackbone(nn.Module):
    """Runs children in registration order and returns the outputs of ``return_layers``.

    ``forward(x: Tensor[B, 3, H, W]) -> list[Tensor]``, one ``[B, C_k, H_k, W_k]`` per returned
    stage, in ``return_layers`` order; children after the last returned stage are not run.
    """

    def __init__(self, return_layers: tuple[str, ...]) -> None:
        super().__init__()
        self.return_layers = tuple(return_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        wanted = set(self.return_layers)
        feats: dict[str, Tensor] = {}
        for name, module in self.named_children():
            x = module(x)
            if name in wanted:
                feats[name] = x
                if len(feats) == len(wanted):
                    break
        return [feats[name] for name in self.return_layers]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` with ``bn``'s running statistics (eval mode)."""
    fused = copy.deepcopy(conv)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
    return fused
