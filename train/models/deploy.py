"""Deploy transform: the inference form of a trained model.

Always: drop the PGI auxiliary branch, fold BatchNorm into the convolutions, fuse each RepConvN's
3x3 and 1x1 branches into one 3x3 conv. Options shape the graph for int8 TFLite and the Edge TPU
without changing its numbers: split ELAN's ``chunk`` into two convs (no SLICE), SiLU as
``x * sigmoid(x)`` (quantizable), grouped convs as block-diagonal dense convs (no CONV_2D v6).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ELAN, Conv, ExplicitSiLU, RepConvN
from .yolo import YOLO


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as a single conv."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=weight.dtype)
    if bn is None:
        return weight, bias
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias.detach()


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, **changes) -> nn.Conv2d:
    args = dict(in_channels=conv.in_channels, out_channels=weight.shape[0], kernel_size=weight.shape[2:],
                stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    args.update(changes)
    fused = nn.Conv2d(**args)
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias)
    return fused


def fold_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Conv) and module.bn is not None:
            module.conv = _conv_like(module.conv, *_folded(module.conv, module.bn))
            module.bn = None


def fuse_repconv(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, RepConvN) and module.fused is None:
            w3, b3 = _folded(module.conv1.conv, module.conv1.bn)
            w1, b1 = _folded(module.conv2.conv, module.conv2.bn)
            module.fused = _conv_like(module.conv1.conv, w3 + F.pad(w1, [1, 1, 1, 1]), b3 + b1)
            del module.conv1, module.conv2


def drop_aux_branch(model: YOLO) -> None:
    model.aux_layers = None
    model.aux_head = None
    model._aux_sources, model._aux_outputs = [], ()
    model.cfg = model.cfg.replace(aux="none")


def split_elan_chunks(model: nn.Module) -> None:
    """Replace ``cv1(x).chunk(2)`` by two convs carrying the two halves of cv1's weights."""
    for module in model.modules():
        if isinstance(module, ELAN) and module.cv1_halves is None:
            conv, half = module.cv1, module.cv1.conv.out_channels // 2
            weight, bias = _folded(conv.conv, conv.bn)
            halves = []
            for part in (slice(0, half), slice(half, None)):
                piece = Conv(conv.conv.in_channels, half, 1, act=None)
                piece.conv = _conv_like(conv.conv, weight[part], bias[part])
                piece.bn = None
                piece.act = copy.deepcopy(conv.act)
                halves.append(piece)
            module.cv1_halves = nn.ModuleList(halves)
            del module.cv1


def explicit_silu(model: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.SiLU):
                setattr(parent, name, ExplicitSiLU())


def ungroup_convs(model: nn.Module) -> None:
    """Grouped (not depthwise) convs become dense convs with block-diagonal weights: same result,
    and TFLite emits a plain CONV_2D instead of the grouped version the Edge TPU compiler rejects."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.Conv2d) or child.groups == 1 or child.groups == child.in_channels:
                continue
            groups, out_per, in_per = child.groups, child.out_channels // child.groups, child.in_channels // child.groups
            dense = child.weight.new_zeros(child.out_channels, child.in_channels, *child.kernel_size)
            for g in range(groups):
                dense[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = \
                    child.weight.detach()[g * out_per:(g + 1) * out_per]
            bias = child.bias.detach() if child.bias is not None else dense.new_zeros(child.out_channels)
            setattr(parent, name, _conv_like(child, dense, bias, groups=1))


@torch.no_grad()
def deploy_model(model: YOLO, *, for_export: bool = False) -> YOLO:
    """A copy of ``model`` in inference form (eval mode). ``for_export`` adds the graph rewrites
    for int8 TFLite / Edge TPU export (split chunks, explicit SiLU, ungrouped convs)."""
    model = copy.deepcopy(model).eval()
    drop_aux_branch(model)
    fuse_repconv(model)
    if for_export:
        split_elan_chunks(model)
    fold_batchnorm(model)
    if for_export:
        explicit_silu(model)
        ungroup_convs(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
