"""Building blocks of GELAN (YOLOv9's main branch) and of its PGI auxiliary branches.

Sub-module names (``cv1``..``cv5``, ``m``, ``conv1``/``conv2``) follow the vocabulary used by every
published YOLOv9 checkpoint, so that foreign weights map onto these blocks key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("silu", "relu6")


class ExplicitSiLU(nn.Module):
    """SiLU written as ``x * sigmoid(x)``: quantizers annotate both ops, so no float island is left.

    Numerically identical to :class:`torch.nn.SiLU`; the deploy transform swaps it in before export.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def make_activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "relu6":
        return nn.ReLU6()
    raise ValueError(f"Unknown activation {name!r}; choose one of {ACTIVATIONS}.")


def same_padding(kernel: int) -> int:
    return kernel // 2


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + activation; after BN folding the conv carries the bias."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, *, groups: int = 1,
                 act: str | None = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, same_padding(k), groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is None:  # folded
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class RepConvN(nn.Module):
    """RepVGG-style conv: a 3x3 and a 1x1 branch (each with BN) summed; fuses into one 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, *, act: str = "silu"):
        super().__init__()
        self.conv1 = Conv(c_in, c_out, 3, act=None)
        self.conv2 = Conv(c_in, c_out, 1, act=None)
        self.act = make_activation(act)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))


class RepNBottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, shortcut: bool = True, act: str = "silu"):
        super().__init__()
        self.cv1 = RepConvN(c_in, c_out, act=act)
        self.cv2 = Conv(c_out, c_out, 3, act=act)
        self.add = shortcut and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class RepNCSP(nn.Module):
    """CSP block: one path through ``n`` RepN bottlenecks, one bypass, merged by a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int, *, act: str = "silu"):
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden, 1, act=act)
        self.cv2 = Conv(c_in, hidden, 1, act=act)
        self.cv3 = Conv(2 * hidden, c_out, 1, act=act)
        self.m = nn.Sequential(*(RepNBottleneck(hidden, hidden, act=act) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class ELAN(nn.Module):
    """GELAN's aggregation block: split, two chained computational branches, concat all four, 1x1 fuse.

    ``csp_depth=0`` gives ELAN1 (plain 3x3 convs in the branches); otherwise each branch is
    RepNCSP(csp_depth) + 3x3 conv (RepNCSPELAN4).
    """

    def __init__(self, c_in: int, c_out: int, c_split: int, c_branch: int, csp_depth: int,
                 *, act: str = "silu"):
        super().__init__()
        self.cv1 = Conv(c_in, c_split, 1, act=act)
        # Set by the deploy transform: two convs holding cv1's two output halves, so the graph
        # has no SLICE op (torch.chunk lowers to SLICE in TFLite).
        self.cv1_halves: nn.ModuleList | None = None
        half = c_split // 2
        if csp_depth == 0:
            self.cv2 = Conv(half, c_branch, 3, act=act)
            self.cv3 = Conv(c_branch, c_branch, 3, act=act)
        else:
            self.cv2 = nn.Sequential(RepNCSP(half, c_branch, csp_depth, act=act),
                                     Conv(c_branch, c_branch, 3, act=act))
            self.cv3 = nn.Sequential(RepNCSP(c_branch, c_branch, csp_depth, act=act),
                                     Conv(c_branch, c_branch, 3, act=act))
        self.cv4 = Conv(c_split + 2 * c_branch, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cv1_halves is not None:
            y = [half(x) for half in self.cv1_halves]
        else:
            y = list(self.cv1(x).chunk(2, 1))
        y.append(self.cv2(y[-1]))
        y.append(self.cv3(y[-1]))
        return self.cv4(torch.cat(y, 1))


class AConv(nn.Module):
    """Down-sampling: 2x2 average pool (stride 1) then a stride-2 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, *, act: str = "silu"):
        super().__init__()
        self.cv1 = Conv(c_in, c_out, 3, 2, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(F.avg_pool2d(x, 2, 1, 0, False, True))


class SPPELAN(nn.Module):
    """Spatial pyramid pooling as three chained 5x5 max-pools, aggregated ELAN-style."""

    def __init__(self, c_in: int, c_out: int, c_hidden: int, *, act: str = "silu"):
        super().__init__()
        self.cv1 = Conv(c_in, c_hidden, 1, act=act)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv5 = Conv(4 * c_hidden, c_out, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv5(torch.cat(y, 1))


class Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class CBLinear(nn.Module):
    """Reversible-branch router: one 1x1 conv whose output is split into per-level pieces."""

    def __init__(self, c_in: int, c_outs: tuple[int, ...]):
        super().__init__()
        self.c_outs = tuple(c_outs)
        self.conv = nn.Conv2d(c_in, sum(self.c_outs), 1, 1, 0, bias=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.conv(x).split(self.c_outs, 1))


class CBFuse(nn.Module):
    """Sums the target feature map with nearest-resized pieces picked from CBLinear outputs."""

    def __init__(self, picks: tuple[int, ...]):
        super().__init__()
        self.picks = tuple(picks)

    def forward(self, xs: list) -> torch.Tensor:
        *routes, target = xs
        size = target.shape[2:]
        pieces = [F.interpolate(route[pick], size=size, mode="nearest")
                  for route, pick in zip(routes, self.picks)]
        return torch.stack([*pieces, target]).sum(0)
