"""A stand-in for the YOLOv9 repository (WongKinYiu/yolov9) model classes, to write checkpoints in its layout.

No real checkpoint of that repository is available here, so these classes rebuild what its pickles
hold: ``models.yolo.DetectionModel`` with ``model`` an ``nn.Sequential`` of ``models.common`` blocks
named and nested as its configs and modules define them (gelan-t/s: 22 layers + DDetect; yolov9-t/s:
+ the auxiliary layers 22-28 and a DualDDetect whose cv2/cv3/dfl serve the auxiliary inputs and
cv4/cv5/dfl2 the main ones). Each block has its own forward, written from the architecture, so a
test compares an imported model against an independent implementation rather than against itself.
The classes are registered as ``models.common``/``models.yolo`` only while a checkpoint is saved.
"""

from __future__ import annotations

import math
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class RepConvN(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.act = nn.SiLU()
        self.bn = None  # the identity branch, disabled in YOLOv9
        self.conv1 = Conv(c_in, c_out, 3, act=False)
        self.conv2 = Conv(c_in, c_out, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class RepNBottleneck(nn.Module):
    __module__ = "models.common"

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = RepConvN(c, c)
        self.cv2 = Conv(c, c, 3)
        self.add = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class RepNCSP(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int, n: int):
        super().__init__()
        hidden = c_out // 2
        self.cv1 = Conv(c_in, hidden)
        self.cv2 = Conv(c_in, hidden)
        self.cv3 = Conv(2 * hidden, c_out)
        self.m = nn.Sequential(*(RepNBottleneck(hidden) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class RepNCSPELAN4(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int, c3: int, c4: int, n: int = 1):
        super().__init__()
        self.cv1 = Conv(c_in, c3)
        self.cv2 = nn.Sequential(RepNCSP(c3 // 2, c4, n), Conv(c4, c4, 3))
        self.cv3 = nn.Sequential(RepNCSP(c4, c4, n), Conv(c4, c4, 3))
        self.cv4 = Conv(c3 + 2 * c4, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        parts += [self.cv2(parts[-1])]
        parts += [self.cv3(parts[-1])]
        return self.cv4(torch.cat(parts, 1))


class ELAN1(RepNCSPELAN4):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int, c3: int, c4: int):
        nn.Module.__init__(self)
        self.cv1 = Conv(c_in, c3)
        self.cv2 = Conv(c3 // 2, c4, 3)
        self.cv3 = Conv(c4, c4, 3)
        self.cv4 = Conv(c3 + 2 * c4, c_out)


class AConv(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.cv1 = Conv(c_in, c_out, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv1(F.avg_pool2d(x, 2, 1, 0, False, True))


class SP(nn.Module):
    __module__ = "models.common"

    def __init__(self, k: int = 5):
        super().__init__()
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class SPPELAN(nn.Module):
    __module__ = "models.common"

    def __init__(self, c_in: int, c_out: int, c3: int):
        super().__init__()
        self.cv1 = Conv(c_in, c3)
        self.cv2, self.cv3, self.cv4 = SP(5), SP(5), SP(5)
        self.cv5 = Conv(4 * c3, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.cv1(x)]
        for pool in (self.cv2, self.cv3, self.cv4):
            parts.append(pool(parts[-1]))
        return self.cv5(torch.cat(parts, 1))


class Concat(nn.Module):
    __module__ = "models.common"

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class DFL(nn.Module):
    __module__ = "models.common"

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1


def _head_branches(channels: tuple[int, ...], nc: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """DDetect's per-level box (grouped) and class branches, with its width rules."""
    box_width = math.ceil(max(channels[0] // 4, 64, 16) / 4) * 4
    cls_width = max(channels[0], min(nc * 2, 128))
    box = nn.ModuleList(nn.Sequential(Conv(c, box_width, 3), Conv(box_width, box_width, 3, g=4),
                                      nn.Conv2d(box_width, 64, 1, groups=4)) for c in channels)
    cls = nn.ModuleList(nn.Sequential(Conv(c, cls_width, 3), Conv(cls_width, cls_width, 3),
                                      nn.Conv2d(cls_width, nc, 1)) for c in channels)
    return box, cls


class DDetect(nn.Module):
    """Returns the raw per-level maps cat(box, cls), as the real one does in training mode."""

    __module__ = "models.yolo"

    def __init__(self, nc: int, channels: tuple[int, ...]):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(channels), 16
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.cv2, self.cv3 = _head_branches(channels, nc)
        self.dfl = DFL(16)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((box(x), cls(x)), 1) for x, box, cls in zip(xs, self.cv2, self.cv3)]


class DualDDetect(nn.Module):
    """Raw maps of both heads: ``[aux levels (cv2/cv3 on the first inputs), main levels (cv4/cv5)]``."""

    __module__ = "models.yolo"

    def __init__(self, nc: int, channels: tuple[int, ...]):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(channels) // 2, 16
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.cv2, self.cv3 = _head_branches(channels[:self.nl], nc)
        self.cv4, self.cv5 = _head_branches(channels[self.nl:], nc)
        self.dfl, self.dfl2 = DFL(16), DFL(16)

    def forward(self, xs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        aux = [torch.cat((box(x), cls(x)), 1) for x, box, cls in zip(xs[:self.nl], self.cv2, self.cv3)]
        main = [torch.cat((box(x), cls(x)), 1) for x, box, cls in zip(xs[self.nl:], self.cv4, self.cv5)]
        return [aux, main]


class DetectionModel(nn.Module):
    __module__ = "models.yolo"

    def __init__(self, layers: list[tuple[Any, nn.Module]], names: dict[int, str] | list[str]):
        super().__init__()
        for index, (source, layer) in enumerate(layers):
            layer.f, layer.i = source, index
        self.model = nn.Sequential(*(layer for _, layer in layers))
        self.names = names
        self.yaml = {"nc": len(names), "depth_multiple": 1.0, "width_multiple": 1.0}
        self.stride = torch.tensor([8.0, 16.0, 32.0])

    def forward(self, x: torch.Tensor) -> Any:
        outputs: list[torch.Tensor] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x)
        return x


class ClassificationModel(nn.Module):
    """The repository's classifier: what the importer must refuse as 'not a detector'."""

    __module__ = "models.yolo"

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(Conv(3, 16, 3, 2))


def build_official_model(base_width: int, num_classes: int, *, aux: bool, names: Any = None,
                         csp_depth: int = 3, seed: int = 0) -> DetectionModel:
    """gelan-t/s (``aux=False``) or yolov9-t/s (``aux=True``) as the repository's configs lay them out,
    with random weights and BatchNorm statistics (as a trained model has)."""
    torch.manual_seed(seed)
    w, d = base_width, csp_depth
    layers: list[tuple[Any, nn.Module]] = [
        (-1, Conv(3, w, 3, 2)), (-1, Conv(w, 2 * w, 3, 2)), (-1, ELAN1(2 * w, 2 * w, 2 * w, w)),
        (-1, AConv(2 * w, 4 * w)), (-1, RepNCSPELAN4(4 * w, 4 * w, 4 * w, 2 * w, d)),
        (-1, AConv(4 * w, 6 * w)), (-1, RepNCSPELAN4(6 * w, 6 * w, 6 * w, 3 * w, d)),
        (-1, AConv(6 * w, 8 * w)), (-1, RepNCSPELAN4(8 * w, 8 * w, 8 * w, 4 * w, d)),
        (-1, SPPELAN(8 * w, 8 * w, 4 * w)), (-1, nn.Upsample(None, 2, "nearest")), ([-1, 6], Concat(1)),
        (-1, RepNCSPELAN4(14 * w, 6 * w, 6 * w, 3 * w, d)), (-1, nn.Upsample(None, 2, "nearest")),
        ([-1, 4], Concat(1)), (-1, RepNCSPELAN4(10 * w, 4 * w, 4 * w, 2 * w, d)),
        (-1, AConv(4 * w, 3 * w)), ([-1, 12], Concat(1)), (-1, RepNCSPELAN4(9 * w, 6 * w, 6 * w, 3 * w, d)),
        (-1, AConv(6 * w, 4 * w)), ([-1, 9], Concat(1)), (-1, RepNCSPELAN4(12 * w, 8 * w, 8 * w, 4 * w, d)),
    ]
    main_channels = (4 * w, 6 * w, 8 * w)
    if aux:
        layers += [
            (8, SPPELAN(8 * w, 8 * w, 4 * w)), (-1, nn.Upsample(None, 2, "nearest")), ([-1, 6], Concat(1)),
            (-1, RepNCSPELAN4(14 * w, 6 * w, 6 * w, 3 * w, d)), (-1, nn.Upsample(None, 2, "nearest")),
            ([-1, 4], Concat(1)), (-1, RepNCSPELAN4(10 * w, 4 * w, 4 * w, 2 * w, d)),
            ([28, 25, 22, 15, 18, 21], DualDDetect(num_classes, main_channels + main_channels)),
        ]
    else:
        layers.append(([15, 18, 21], DDetect(num_classes, main_channels)))
    model = DetectionModel(layers, names if names is not None else {i: f"c{i}" for i in range(num_classes)})
    randomize_batchnorm(model, seed)
    return model.eval()


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so a wrong BN mapping shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
            module.num_batches_tracked.fill_(1000)


@contextmanager
def registered_as_repository_modules() -> Iterator[None]:
    """Make ``models.common``/``models.yolo`` importable while pickling, as they are in the repository."""
    common, yolo = types.ModuleType("models.common"), types.ModuleType("models.yolo")
    package = types.ModuleType("models")
    package.common, package.yolo = common, yolo
    for module, names in ((common, ("Conv", "RepConvN", "RepNBottleneck", "RepNCSP", "RepNCSPELAN4", "ELAN1",
                                    "AConv", "SP", "SPPELAN", "Concat", "DFL")),
                          (yolo, ("DDetect", "DualDDetect", "DetectionModel", "ClassificationModel"))):
        for name in names:
            setattr(module, name, globals()[name])
    saved = {name: sys.modules.get(name) for name in ("models", "models.common", "models.yolo")}
    sys.modules.update({"models": package, "models.common": common, "models.yolo": yolo})
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def save_official_checkpoint(model: nn.Module, path: Path, *, half: bool = False, **extra: Any) -> Path:
    """``torch.save`` as the repository's train.py leaves a stripped checkpoint (``model``, ``ema`` None).

    With ``half`` (as released files are) the model keeps the fp16-rounded weights afterwards, so its
    outputs stay comparable with those of the imported model.
    """
    saved = model.half() if half else model
    payload = {"model": saved, "ema": None, "updates": None, "optimizer": None, "epoch": -1,
               "best_fitness": None, **extra}
    with registered_as_repository_modules():
        torch.save(payload, path)
    if half:
        model.float()
    return path
