"""A stand-in for MIT YOLO's (MultimediaTechLab/YOLO) v9-t/v9-s model, to write weight files in its layout.

No real MIT weight file is available here. Its files are plain state dicts of the model's layer list
(``YOLO.model``, an ``nn.ModuleList``), so what must be faithful is the key structure: the blocks of
its ``yolo/model/module.py`` (Conv, RepConv, Bottleneck, RepNCSP, ELAN, RepNCSPELAN, AConv, SPPELAN,
Detection with anchor_conv/class_conv/anc2vec, MultiheadDetection) in the layer order of its
``v9-t.yaml``/``v9-s.yaml`` (main head at 22, auxiliary layers 23-29, auxiliary head at 30). Each
block has its own forward, written from the architecture, to compare an import against.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .official_layout import randomize_batchnorm


class Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, *, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=3e-2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class RepConv(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.act = nn.SiLU()
        self.conv1 = Conv(c_in, c_out, 3, act=False)
        self.conv2 = Conv(c_in, c_out, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = RepConv(c, c)
        self.conv2 = Conv(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class RepNCSP(nn.Module):
    def __init__(self, c_in: int, c_out: int, repeat: int):
        super().__init__()
        neck = c_out // 2
        self.conv1 = Conv(c_in, neck, 1)
        self.conv2 = Conv(c_in, neck, 1)
        self.conv3 = Conv(2 * neck, c_out, 1)
        self.bottleneck = nn.Sequential(*(Bottleneck(neck) for _ in range(repeat)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat((self.bottleneck(self.conv1(x)), self.conv2(x)), 1))


class ELAN(nn.Module):
    def __init__(self, c_in: int, c_out: int, part: int, repeat: int | None = None):
        super().__init__()
        process = part // 2
        self.conv1 = Conv(c_in, part, 1)
        if repeat is None:  # plain ELAN
            self.conv2 = Conv(part // 2, process, 3)
            self.conv3 = Conv(process, process, 3)
        else:  # RepNCSPELAN
            self.conv2 = nn.Sequential(RepNCSP(part // 2, process, repeat), Conv(process, process, 3))
            self.conv3 = nn.Sequential(RepNCSP(process, process, repeat), Conv(process, process, 3))
        self.conv4 = Conv(part + 2 * process, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv1(x).chunk(2, 1)
        x3 = self.conv2(x2)
        x4 = self.conv3(x3)
        return self.conv4(torch.cat([x1, x2, x3, x4], 1))


class AConv(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.avg_pool = nn.AvgPool2d(2, 1)
        self.conv = Conv(c_in, c_out, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.avg_pool(x))


class SPPELAN(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        neck = c_out // 2
        self.conv1 = Conv(c_in, neck, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(5, 1, 2) for _ in range(3))
        self.conv5 = Conv(4 * neck, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.conv1(x)]
        for pool in self.pools:
            features.append(pool(features[-1]))
        return self.conv5(torch.cat(features, 1))


class UpSample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Anchor2Vec(nn.Module):
    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.anc2vec = nn.Conv3d(reg_max, 1, 1, bias=False)
        self.anc2vec.weight = nn.Parameter(torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1, 1),
                                           requires_grad=False)


class Detection(nn.Module):
    """One level: returns (class logits, raw box bins), the maps our head returns as (cls, box)."""

    def __init__(self, first_neck: int, c_in: int, num_classes: int, reg_max: int = 16):
        super().__init__()
        anchor_neck = max(math.ceil(first_neck // 4 / 4) * 4, 4 * reg_max, reg_max)
        class_neck = max(first_neck, min(num_classes * 2, 128))
        self.anchor_conv = nn.Sequential(Conv(c_in, anchor_neck, 3), Conv(anchor_neck, anchor_neck, 3, groups=4),
                                         nn.Conv2d(anchor_neck, 4 * reg_max, 1, groups=4))
        self.class_conv = nn.Sequential(Conv(c_in, class_neck, 3), Conv(class_neck, class_neck, 3),
                                        nn.Conv2d(class_neck, num_classes, 1))
        self.anc2vec = Anchor2Vec(reg_max)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.class_conv(x), self.anchor_conv(x)


class MultiheadDetection(nn.Module):
    def __init__(self, channels: tuple[int, ...], num_classes: int):
        super().__init__()
        self.heads = nn.ModuleList(Detection(channels[0], c, num_classes) for c in channels)

    def forward(self, xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [head(x) for x, head in zip(xs, self.heads)]


class MitYOLO(nn.Module):
    """``model`` is the layer list whose state_dict MIT YOLO saves; forward returns {"Main", "AUX"}."""

    def __init__(self, base_width: int, num_classes: int, repeat: int = 3):
        super().__init__()
        w, r = base_width, repeat
        layers: list[tuple[Any, nn.Module]] = [
            (-1, Conv(3, w, 3, stride=2)), (-1, Conv(w, 2 * w, 3, stride=2)), (-1, ELAN(2 * w, 2 * w, 2 * w)),
            (-1, AConv(2 * w, 4 * w)), (-1, ELAN(4 * w, 4 * w, 4 * w, r)),
            (-1, AConv(4 * w, 6 * w)), (-1, ELAN(6 * w, 6 * w, 6 * w, r)),
            (-1, AConv(6 * w, 8 * w)), (-1, ELAN(8 * w, 8 * w, 8 * w, r)),
            (-1, SPPELAN(8 * w, 8 * w)), (-1, UpSample()), ([-1, 6], Concat()), (-1, ELAN(14 * w, 6 * w, 6 * w, r)),
            (-1, UpSample()), ([-1, 4], Concat()), (-1, ELAN(10 * w, 4 * w, 4 * w, r)),
            (-1, AConv(4 * w, 3 * w)), ([-1, 12], Concat()), (-1, ELAN(9 * w, 6 * w, 6 * w, r)),
            (-1, AConv(6 * w, 4 * w)), ([-1, 9], Concat()), (-1, ELAN(12 * w, 8 * w, 8 * w, r)),
            ([15, 18, 21], MultiheadDetection((4 * w, 6 * w, 8 * w), num_classes)),               # 22 Main
            (8, SPPELAN(8 * w, 8 * w)), (-1, UpSample()), ([-1, 6], Concat()), (-1, ELAN(14 * w, 6 * w, 6 * w, r)),
            (-1, UpSample()), ([-1, 4], Concat()), (-1, ELAN(10 * w, 4 * w, 4 * w, r)),
            ([29, 26, 23], MultiheadDetection((4 * w, 6 * w, 8 * w), num_classes)),               # 30 AUX
        ]
        self.sources = [source for source, _ in layers]
        self.model = nn.ModuleList(layer for _, layer in layers)

    def forward(self, image: torch.Tensor) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        outputs: list[Any] = []
        for index, (source, layer) in enumerate(zip(self.sources, self.model)):
            if source == -1:
                x = image if index == 0 else outputs[-1]
            elif isinstance(source, int):
                x = outputs[source]
            else:
                x = [outputs[index - 1] if s == -1 else outputs[s] for s in source]
            outputs.append(layer(x))
        return {"Main": outputs[22], "AUX": outputs[30]}


def build_mit_model(base_width: int, num_classes: int, *, seed: int = 0) -> MitYOLO:
    """v9-t (16) or v9-s (32) with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    model = MitYOLO(base_width, num_classes)
    randomize_batchnorm(model, seed)
    return model.eval()


def save_release_weights(model: MitYOLO, path: Path) -> Path:
    """As MIT YOLO's released v9-*.pt: the state_dict of the layer list, keys ``"{layer}.{path}"``."""
    torch.save(model.model.state_dict(), path)
    return path


def save_lightning_checkpoint(model: MitYOLO, ema: MitYOLO, path: Path) -> Path:
    """As its Lightning training writes a .ckpt: the module's state_dict holds the model and the EMA copy."""
    state = OrderedDict()
    for prefix, copy in (("model.model.", model), ("ema.model.", ema)):
        state.update((prefix + key, tensor) for key, tensor in copy.model.state_dict().items())
    torch.save({"epoch": 3, "global_step": 300, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
                "hparams_name": "cfg", "hyper_parameters": {"cfg": {"model": {"name": "v9-t"}}}}, path)
    return path
