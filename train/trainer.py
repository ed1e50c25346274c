"""Training of GELAN / YOLOv9 (PGI) detectors on YOLO-format data, on CPU or CUDA.

The YOLOv9 recipe: SGD (momentum 0.937, nesterov) with no weight decay on norms and biases,
warm-up, linear or cosine LR decay (AdamW instead for short runs, see :func:`choose_optimizer`), EMA of the
weights, gradient clipping, mixed precision on CUDA (:func:`amp_dtype`), gradient accumulation to a nominal batch
of 64, mosaic closed for the last epochs. Every epoch is validated (COCO mAP of the EMA weights) and written
atomically to ``last.pt`` (and ``best.pt``), with the optimizer, EMA and schedule state, so ``--resume``
continues a killed run where it stopped. Under torchrun the same run spreads over several processes
(:mod:`.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edge_yolov9.errors import DatasetError, EdgeYoloError, ImageError, ModelError, writing
from edge_yolov9.model_file import InputSize, weights_notice
from edge_yolov9.preprocess import load_image

from .augment import Annotated, AugmentConfig, augment, resize_to_fit
from . import distributed
from .checkpoint import plain_state_dict, read_checkpoint, remove_stale_temp_files, save_checkpoint
from .data import DataConfig, Sample, list_split, load_data_config
from .evaluate import Metrics, TorchPredictor, evaluate, load_eval_set
from .loss import DetectionLoss, LossConfig
from .importers.core import load_any_checkpoint
from .models import YOLO, ModelConfig, create_model, load_weights, model_config
from .synthetic import builtin_dataset

logger = logging.getLogger(__name__)

BUILTIN_DATA = "shapes"
DEFAULT_MODEL = "yolov9-t"
BACKBONE_LAYERS = 9  # layers 0-8: the GELAN backbone
OPTIMIZERS = ("auto", "sgd", "adamw")
DEFAULT_LR0 = {"sgd": 0.01, "adamw": 0.002}
# 'auto' picks SGD from this many optimizer steps on: below it (fine-tuning, CPU runs) AdamW gets further.
AUTO_SGD_MIN_STEPS = 10_000


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in its checkpoints so ``--resume`` needs nothing else."""

    model: str | None = None  # None: DEFAULT_MODEL, or with ``weights`` the checkpoint's own architecture
    data: str = BUILTIN_DATA
    weights: str | None = None  # an edge-yolov9 checkpoint, or a foreign one (imported on the fly)
    partial_load: bool = False  # start from the tensors of ``weights`` that fit another architecture
    classes: list[str] | None = None  # per data class, the class of ``weights`` (name or id) it starts from
    imgsz: int | tuple[int, int] = 320  # (height, width) once built; one int is a square
    epochs: int = 30
    batch: int = 16
    nominal_batch: int = 64
    workers: int = -1
    device: str = "auto"
    amp: bool | None = None  # mixed precision; None: on for CUDA, off on the CPU (see amp_dtype)
    sync_bn: bool = False  # SyncBatchNorm across the processes of a distributed run (CUDA)
    activation: str | None = None  # None: the checkpoint's with ``weights``, else silu
    optimizer: str = "auto"
    lr0: float | None = None  # None: DEFAULT_LR0 of the optimizer
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    cos_lr: bool = False
    close_mosaic: int = 15
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    max_grad_norm: float = 10.0
    freeze_backbone: bool = False
    cache: bool = True
    seed: int = 0
    time_budget: float | None = None  # minutes; the epoch count is re-fitted to it after each epoch
    patience: int | None = None  # end the run after this many epochs without a better validation fitness
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False  # write into project/name even when it exists (else name2, name3, ...)
    augment: dict[str, float] = field(default_factory=lambda: asdict(AugmentConfig()))
    loss: dict[str, float] = field(default_factory=lambda: asdict(LossConfig()))
    architecture: dict[str, Any] | None = None  # the model config the run built (what a resume rebuilds)

    def run_dir(self) -> Path:
        return Path(self.project) / self.name

    def __post_init__(self) -> None:
        self.imgsz = tuple(InputSize.of(self.imgsz))  # a plain pair: checkpoints hold no custom classes

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EdgeYoloError(f"Device {name!r} was asked for but CUDA is not available", "use --device cpu")
    return device


def amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype of a run, None for full precision. CUDA: bfloat16 where the GPU has it (no loss
    scaling needed), else float16 with a gradient scaler; on by default. CPU: bfloat16 when asked for (--amp)."""
    if amp is False or (amp is None and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def default_workers(requested: int) -> int:
    """Data-loading processes: leave a core for the training step itself."""
    return requested if requested >= 0 else min(8, max(0, (os.cpu_count() or 1) - 1))


def resolve_data(data: str) -> Path:
    return builtin_dataset() if data == BUILTIN_DATA else Path(data)


def claim_run_name(project: Path, name: str) -> str:
    """``name``, or the first free ``name2``, ``name3``... (as Ultralytics numbers runs), created at once, so
    a new run never overwrites an earlier run's checkpoints and results, nor shares a folder with a
    concurrent one."""
    number = 1
    with writing(project, "the run folder"):
        project.mkdir(parents=True, exist_ok=True)
        while True:
            candidate = name if number == 1 else f"{name}{number}"
            try:
                (project / candidate).mkdir()
                return candidate
            except FileExistsError:
                number += 1


# --------------------------------------------------------------------------- data


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples. Randomness comes from (seed, epoch, index), so a run is repeatable
    whatever the number of loader processes, and a resumed epoch sees the same augmentations."""

    def __init__(self, samples: list[Sample], size: tuple[int, int], cfg: AugmentConfig, seed: int, cache: bool):
        self.samples, self.size, self.cfg, self.seed = samples, size, cfg, seed
        self.epoch, self.use_mosaic = 0, True
        self._cache: list[Annotated] | None = None
        if cache:
            self._cache = [self._read(i) for i in tqdm(range(len(samples)), desc="caching images", unit="img",
                                                       leave=False)]

    def _read(self, index: int) -> Annotated:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        h, w = image.shape[:2]
        cx, cy, bw, bh = (sample.labels[:, i] for i in range(1, 5))
        boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
        return resize_to_fit(Annotated(image, boxes.astype(np.float32), sample.labels[:, 0].astype(np.int64)),
                             self.size)

    def load(self, index: int) -> Annotated:
        return self._cache[index] if self._cache is not None else self._read(index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = augment(index, self.load, len(self), self.size, rng, self.cfg, self.use_mosaic)
        targets = np.concatenate([sample.classes[:, None].astype(np.float32), sample.boxes], 1)
        image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))
        return image, torch.from_numpy(targets)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) uint8 and targets (N, 6): image index, class, x1, y1, x2, y2."""
    images, targets = zip(*batch)
    indexed = [torch.cat([torch.full((len(t), 1), float(i)), t], 1) for i, t in enumerate(targets)]
    return torch.stack(images), torch.cat(indexed) if indexed else torch.zeros(0, 6)


# --------------------------------------------------------------------------- optimisation


class ModelEMA:
    """Exponential moving average of the weights; the decay ramps up over the first updates."""

    def __init__(self, model: nn.Module, decay: float, tau: float, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[key].detach(), alpha=1 - d)
            else:
                value.copy_(current[key])


def choose_optimizer(cfg: TrainConfig, steps: int) -> str:
    """The optimizer of a run of ``steps`` optimizer steps: SGD, the YOLOv9 recipe, needs hundreds of
    epochs to pay off; AdamW converges much faster in the few thousand steps of a fine-tune or a CPU run."""
    if cfg.optimizer not in OPTIMIZERS:
        raise EdgeYoloError(f"Unknown optimizer {cfg.optimizer!r}", f"use one of {', '.join(OPTIMIZERS)}")
    if cfg.optimizer != "auto":
        return cfg.optimizer
    return "sgd" if steps >= AUTO_SGD_MIN_STEPS else "adamw"


def build_optimizer(model: nn.Module, cfg: TrainConfig, weight_decay: float) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (resolved, not 'auto') over three groups: conv/linear weights (decayed),
    norm weights and biases (not decayed)."""
    decayed, norms, biases = [], [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                biases.append(param)
            elif isinstance(module, nn.BatchNorm2d):
                norms.append(param)
            else:
                decayed.append(param)
    if cfg.optimizer not in DEFAULT_LR0:
        raise ValueError(f"build_optimizer needs a resolved optimizer, not {cfg.optimizer!r} (see choose_optimizer)")
    lr = cfg.lr0 if cfg.lr0 is not None else DEFAULT_LR0[cfg.optimizer]
    if cfg.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(norms, lr=lr, betas=(cfg.momentum, 0.999),
                                                             weight_decay=0.0)
    else:
        optimizer = torch.optim.SGD(norms, lr=lr, momentum=cfg.momentum, nesterov=True)
    optimizer.add_param_group({"params": decayed, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": biases, "weight_decay": 0.0})
    return optimizer


def lr_factor(epoch: float, cfg: TrainConfig) -> float:
    """Multiplier of lr0 at (fractional) ``epoch``: linear or cosine from 1 down to ``lrf``."""
    progress = min(epoch / cfg.epochs, 1.0)
    if cfg.cos_lr:
        return ((1 - math.cos(progress * math.pi)) / 2) * (cfg.lrf - 1) + 1
    return (1 - progress) * (1.0 - cfg.lrf) + cfg.lrf


def _set_momentum(group: dict[str, Any], momentum: float) -> None:
    if "betas" in group:
        group["betas"] = (momentum, group["betas"][1])
    else:
        group["momentum"] = momentum


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int, iteration: int,
                       warmup_iterations: int) -> None:
    """Warm-up: weights and norms ramp from 0 (SGD's biases down from ``warmup_bias_lr``) to the
    schedule, momentum from ``warmup_momentum``; afterwards the epoch's scheduled rate."""
    assert cfg.lr0 is not None, "resolved by the Trainer"
    target = cfg.lr0 * lr_factor(epoch, cfg)
    if iteration >= warmup_iterations:
        for group in optimizer.param_groups:
            group["lr"] = target
            _set_momentum(group, cfg.momentum)
        return
    t = iteration / max(warmup_iterations, 1)
    bias_start = cfg.warmup_bias_lr if isinstance(optimizer, torch.optim.SGD) else 0.0
    for index, group in enumerate(optimizer.param_groups):
        start = bias_start if index == 2 else 0.0
        group["lr"] = start + (target - start) * t
        _set_momentum(group, cfg.warmup_momentum + (cfg.momentum - cfg.warmup_momentum) * t)


# --------------------------------------------------------------------------- the run


def fitness(metrics: Metrics | EpochResult) -> float:
    return 0.1 * metrics.map50 + 0.9 * metrics.map50_95


@dataclass
class EpochResult:
    epoch: int
    lr: float
    box_loss: float
    dfl_loss: float
    cls_loss: float
    map50_95: float
    map50: float
    images_per_second: float
    seconds: float


def class_rows(requested: list[str] | None, names: list[str], source_names: list[str],
               weights: str) -> list[int | None]:
    """For each data class, the class of the ``weights`` checkpoint whose class-branch row it starts from (None:
    a fresh row): ``requested`` (``--classes``: a checkpoint class name or id per data class, in order), else the
    checkpoint class of the same name."""
    if requested is None:
        return [source_names.index(name) if name in source_names else None for name in names]
    if len(requested) != len(names):
        raise ModelError(f"--classes lists {len(requested)} classes but the data has {len(names)} "
                         f"({', '.join(names[:8])})", "give one class of the checkpoint (name or id) per data class, "
                                                      "in the data's order; a new name starts a fresh class")
    rows: list[int | None] = []
    for entry in requested:
        if entry.isdigit():
            if int(entry) >= len(source_names):
                raise ModelError(f"--classes {entry}: {weights} has {len(source_names)} classes (ids 0 to "
                                 f"{len(source_names) - 1})", "give a class id or name of the checkpoint")
            rows.append(int(entry))
        else:
            rows.append(source_names.index(entry) if entry in source_names else None)
    return rows


def _copy_class_rows(model: YOLO, source: YOLO, rows: list[int | None]) -> None:
    """Each class's output row (weights and bias of the last class conv, every level) from the source's ``row``."""
    pairs = [(model.head, source.head)] + ([(model.aux_head, source.aux_head)]
                                           if model.aux_head is not None and source.aux_head is not None else [])
    with torch.no_grad():
        for ours, theirs in pairs:
            for mine, original in zip(ours.cls, theirs.cls):
                for k, row in enumerate(rows):
                    if row is not None:
                        mine[-1].weight[k] = original[-1].weight[row]
                        mine[-1].bias[k] = original[-1].bias[row]


def _why_fresh(key: str, source: ModelConfig, target: ModelConfig) -> str | None:
    """Why tensor ``key`` of ``target`` cannot come from a checkpoint of ``source``: None when it should have."""
    if source.aux == "none" and target.aux != "none" and key.startswith(("aux_layers.", "aux_head.")):
        return "in the added auxiliary branch"
    if source.num_classes != target.num_classes and key.startswith(("head.cls.", "aux_head.cls.")):
        return f"in the class branch ({source.num_classes} -> {target.num_classes} classes)"
    return None


class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume_from: Path | None = None):
        self.cfg = cfg
        self.world = distributed.World.from_env()
        distributed.quiet_unless_main(self.world)
        self.device = distributed.join_group(self.world, resolve_device(cfg.device))
        self.local_batch = distributed.local_batch(cfg.batch, self.world)
        self.amp = amp_dtype(self.device, cfg.amp)
        self.run_dir = cfg.run_dir()
        data_yaml = resolve_data(cfg.data)
        self.data: DataConfig = load_data_config(data_yaml)
        train_samples = list_split(self.data, "train")
        if not train_samples:
            raise DatasetError(f"The `train` split of {self.data.yaml_path} has no images", "add images")
        self.val_set = load_eval_set(data_yaml, split="val")
        torch.manual_seed(cfg.seed)  # the initial weights, hence the whole run, follow the seed
        self.weights_license: dict[str, str] | None = None  # of foreign --weights, carried into every checkpoint
        # channels-last activations: the CPU's (oneDNN) and the GPUs' convolution kernels run faster on NHWC.
        self.model = self._build_model().to(self.device, memory_format=torch.channels_last)
        self.loss = DetectionLoss(self.model.strides, self.model.cfg.head.reg_max, LossConfig(**cfg.loss))
        try:
            self.dataset = TrainDataset(train_samples, cfg.imgsz, AugmentConfig(**cfg.augment), cfg.seed, cfg.cache)
        except ImageError as err:
            raise DatasetError(f"A training image cannot be read: {err.problem}",
                               err.fix or "remove the file or its label") from None
        self.accumulate = max(round(cfg.nominal_batch / cfg.batch), 1)
        weight_decay = cfg.weight_decay * cfg.batch * self.accumulate / cfg.nominal_batch
        # Resolved into the config, which checkpoints store, so a resumed run keeps the same choice.
        steps = cfg.epochs * math.ceil(len(train_samples) / cfg.batch) // self.accumulate
        cfg.optimizer = choose_optimizer(cfg, steps)
        cfg.lr0 = cfg.lr0 if cfg.lr0 is not None else DEFAULT_LR0[cfg.optimizer]
        self.optimizer = build_optimizer(self.model, cfg, weight_decay)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_tau)
        self.train_model = distributed.wrap(self.model, self.world, self.device, cfg.sync_bn)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.start_epoch, self.best_fitness, self.history = 0, -1.0, []
        self.resuming = resume_from is not None
        if resume_from is not None:
            self._restore(resume_from)

    def _build_model(self) -> YOLO:
        cfg = self.cfg
        if cfg.architecture is not None:  # a resumed run: the model it was training (its weights follow)
            model = create_model(ModelConfig.from_dict(cfg.architecture))
        elif cfg.weights:
            model = self._fine_tuning_model()
        elif cfg.classes or cfg.partial_load:
            raise ModelError(f"--{'classes' if cfg.classes else 'partial-load'} is about the checkpoint to fine-tune, "
                             "and no --weights was given", "add --weights CHECKPOINT, or leave the option out")
        else:
            model = create_model(cfg.model or DEFAULT_MODEL, num_classes=self.data.num_classes,
                                 activation=cfg.activation or "silu", input_size=cfg.imgsz)
        cfg.architecture = model.cfg.to_dict()
        if cfg.freeze_backbone:
            for layer in model.layers[:BACKBONE_LAYERS]:
                layer.requires_grad_(False)
        return model

    def _fine_tuning_model(self) -> YOLO:
        """The model of ``--weights`` with this data's classes, its weights loaded. Without ``--model`` it is the
        checkpoint's own architecture; ``--model yolov9-t/s`` on a main-branch checkpoint of the same size adds
        the PGI auxiliary branch. Every tensor that starts fresh has a reason (the class count changed, the
        auxiliary branch was added); anything else is an error unless ``--partial-load``."""
        cfg = self.cfg
        source, source_names, source_meta = load_any_checkpoint(cfg.weights)
        self.weights_license = source_meta.get("weights_license")
        if self.weights_license:
            logger.warning("Fine-tuning %s: %s", cfg.weights, weights_notice(self.weights_license))
        own = source.cfg
        changes = {"num_classes": self.data.num_classes, "input_size": cfg.imgsz,
                   **({"activation": cfg.activation} if cfg.activation else {})}
        wanted = model_config(cfg.model) if cfg.model else own
        rows = class_rows(cfg.classes, list(self.data.names), source_names, cfg.weights)
        kept_rows = rows != list(range(len(source_names))) and any(row is not None for row in rows)
        if kept_rows:  # the class branch keeps the width its rows were trained with
            changes["head"] = replace(own.head, cls_width=source.head.cls[0][-1].in_channels)
        if (wanted.base_width, wanted.csp_depth) == (own.base_width, own.csp_depth):
            target = own.replace(name=wanted.name, aux=wanted.aux, **changes)
            if target.aux != own.aux:
                logger.info("--model %s %s %s (%s)", cfg.model, "adds the PGI auxiliary branch (trained from scratch, "
                            "dropped at export) to" if target.aux != "none" else "leaves out the auxiliary branch of",
                            cfg.weights, own.name)
        elif cfg.partial_load:  # another architecture: its class rows do not fit either
            kept_rows = False
            target = wanted.replace(**{k: v for k, v in changes.items() if k != "head"})
        else:
            raise ModelError(f"--model {cfg.model} (base width {wanted.base_width}, depth {wanted.csp_depth}) is "
                             f"another architecture than {cfg.weights} ({own.name}: base width {own.base_width}, "
                             f"depth {own.csp_depth})",
                             "leave out --model to fine-tune the checkpoint's own architecture, name the variant it "
                             "is, or pass --partial-load to keep only the tensors that fit")
        model = create_model(target)
        report = load_weights(model, source.state_dict(), strict=False, log=False)
        fresh = report.missing + [entry.split(" ", 1)[0] for entry in report.shape_mismatch]
        why = {key: _why_fresh(key, own, target) for key in fresh}
        unexplained = [key for key, reason in why.items() if reason is None]
        if unexplained and not cfg.partial_load:
            raise ModelError(f"{cfg.weights} does not fit {target.name} as it is: {len(unexplained)} tensors would "
                             f"start from scratch ({', '.join(unexplained[:4])}, ...)",
                             "pass --partial-load to start from the tensors that fit")
        if kept_rows:
            _copy_class_rows(model, source, rows)
            logger.info("Class branch: %s", ", ".join(
                f"{name} from {source_names[row]} ({row})" if row is not None else f"{name} new"
                for name, row in zip(self.data.names, rows)))
        reasons = ", ".join(f"{sum(1 for r in why.values() if r == reason)} {reason}"
                            for reason in dict.fromkeys(r for r in why.values() if r))
        logger.info("Fine-tuning %s from %s: %d tensors kept, %d start fresh%s%s", target.name, cfg.weights,
                    len(model.state_dict()) - len(fresh), len(fresh), f" ({reasons})" if reasons else "",
                    f"; --partial-load: {report.summary()}" if unexplained else "")
        return model

    def _restore(self, path: Path) -> None:
        state = read_checkpoint(path)
        if "optimizer" not in state:
            raise EdgeYoloError(f"{path} holds no training state (a best.pt or an imported model)",
                                "resume from the run's last.pt")
        self.model.load_state_dict(state["train_model"])
        self.ema.ema.load_state_dict(state["model"])
        self.weights_license = state["meta"].get("weights_license")
        self.ema.updates = state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1
        self.best_fitness = state["best_fitness"]
        self.history = [EpochResult(**row) for row in state["history"]]
        logger.info("Resuming %s at epoch %d of %d", path, self.start_epoch + 1, self.cfg.epochs)

    def _save(self, epoch: int, best: bool) -> None:
        meta = {"epoch": epoch, "source": "train",
                "map50_95": self.history[-1].map50_95, "map50": self.history[-1].map50}
        if self.weights_license:
            meta["weights_license"] = self.weights_license
        state = {"train_model": plain_state_dict(self.model),
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "ema_updates": self.ema.updates, "epoch": epoch, "best_fitness": self.best_fitness,
                 "history": [asdict(h) for h in self.history], "train_config": asdict(self.cfg)}
        # best.pt first: last.pt's best_fitness, which a resumed run compares against, then never names a
        # best.pt that a kill between the two saves kept from being written.
        if best:
            save_checkpoint(self.run_dir / "best.pt", self.ema.ema, list(self.data.names), meta=meta)
        save_checkpoint(self.run_dir / "last.pt", self.ema.ema, list(self.data.names), meta=meta, **state)

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        self.dataset.epoch = epoch
        self.dataset.use_mosaic = epoch < self.cfg.epochs - self.cfg.close_mosaic
        sampler = distributed.GlobalBatchSampler(len(self.dataset), self.cfg.batch, self.world, self.cfg.seed)
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.local_batch, sampler=sampler, drop_last=False,
                                           num_workers=default_workers(self.cfg.workers), collate_fn=collate,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")

    def train_epoch(self, epoch: int) -> tuple[list[float], float, float]:
        """One pass over the data: mean loss terms, images/s and the last learning rate."""
        self.model.train()
        loader = self._loader(epoch)
        batches = len(loader)
        warmup = round(self.cfg.warmup_epochs * batches)
        sums, seen, started = np.zeros(3), 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=True,
                   disable=not self.world.main)
        self.optimizer.zero_grad(set_to_none=True)
        for step, (images, targets) in enumerate(bar):
            iteration = step + batches * epoch
            set_learning_rates(self.optimizer, self.cfg, epoch, iteration, warmup)
            images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last).float().div_(255)
            stepping = (step + 1) % self.accumulate == 0 or step + 1 == batches
            # Gradients are averaged over the processes only at the step that applies them.
            with self._sync_gradients(stepping):
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    output = self.train_model(images)
                total, items = self.loss(output, targets)
                # DDP averages the processes' gradients: each process's loss counts world-size times, so a
                # step's gradient is that of the global batch's summed loss, as in a one-process run.
                self.scaler.scale(total * self.world.size).backward()
            if stepping:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                distributed.sync_buffers(self.model, self.world)
                self.ema.update(self.model)
            sums += np.array([t.item() for t in items]) * len(images)
            seen += len(images)
            rate = seen * self.world.size / (time.perf_counter() - started)
            mean = sums / seen
            bar.set_postfix(box=f"{mean[0]:.3f}", dfl=f"{mean[1]:.3f}", cls=f"{mean[2]:.3f}", img_s=f"{rate:.1f}")
        bar.close()
        means, seen = distributed.mean_over_ranks(sums / max(seen, 1), seen, self.world)
        # Plain floats: the history goes into checkpoints, which load with weights_only (no numpy scalars).
        return ([float(v) for v in means], seen / (time.perf_counter() - started),
                float(self.optimizer.param_groups[0]["lr"]))

    def _sync_gradients(self, stepping: bool) -> contextlib.AbstractContextManager:
        if stepping or not self.world.distributed:
            return contextlib.nullcontext()
        return self.train_model.no_sync()

    def validate(self) -> Metrics:
        predictor = TorchPredictor(self.ema.ema, self.cfg.imgsz)
        return evaluate(self.val_set, predictor, batch_size=self.cfg.batch).metrics

    def _prepare_run_dir(self) -> None:
        """A new run gets a new folder (unless ``exist_ok``); a reused one loses the temp files of saves
        that a kill interrupted, which nothing else would ever remove."""
        if not (self.resuming or self.cfg.exist_ok):
            wanted = self.cfg.name
            self.cfg.name = distributed.broadcast(
                claim_run_name(Path(self.cfg.project), wanted) if self.world.main else None, self.world)
            if self.cfg.name != wanted:
                logger.info("%s exists: this run writes to %s (--exist-ok reuses the folder)",
                            Path(self.cfg.project) / wanted, self.cfg.name)
        self.run_dir = self.cfg.run_dir()
        if not self.world.main:
            return
        with writing(self.run_dir, "the run folder"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temp_files(self.run_dir, "last.pt", "best.pt")
        if stale:
            logger.warning("Removed %d temp file(s) of interrupted checkpoint saves: %s", len(stale),
                           ", ".join(p.name for p in stale))

    def fit(self) -> Path:
        """Train the remaining epochs; returns the best checkpoint's path."""
        self._prepare_run_dir()
        where = (f"{self.world.size} processes ({self.device.type}, batch {self.local_batch} each)"
                 if self.world.distributed else str(self.device))
        logger.info("Training %s on %s (%d images, %d classes) at %s px on %s, %d epochs, batch %d x %d, %s lr %g%s",
                    self.model.cfg.name, self.data.yaml_path, len(self.dataset), self.data.num_classes,
                    InputSize(*self.cfg.imgsz), where, self.cfg.epochs, self.cfg.batch, self.accumulate,
                    self.cfg.optimizer, self.cfg.lr0, f", {str(self.amp).replace('torch.', '')} autocast" if self.amp
                    else "")
        epoch = self.start_epoch
        while epoch < self.cfg.epochs:
            started = time.perf_counter()
            losses, throughput, lr = self.train_epoch(epoch)
            if self.world.main:  # validation, checkpoints and results: rank 0's, while the others wait
                self._finish_epoch(epoch, losses, throughput, lr, started)
            # Rank 0's epoch count (a time budget or patience may change it); the broadcast also holds the other
            # ranks until rank 0 has validated and saved.
            self.cfg.epochs = distributed.broadcast(self.cfg.epochs, self.world)
            epoch += 1
        return self.run_dir / "best.pt"

    def _finish_epoch(self, epoch: int, losses: list[float], throughput: float, lr: float, started: float) -> None:
        metrics = self.validate()
        self.history.append(EpochResult(epoch + 1, lr, *losses, metrics.map50_95, metrics.map50, throughput,
                                        time.perf_counter() - started))
        improved = fitness(metrics) > self.best_fitness
        self.best_fitness = max(self.best_fitness, fitness(metrics))
        if self.cfg.time_budget is not None:
            self._fit_epochs_to_budget(epoch + 1)
        if self.cfg.patience is not None and not improved:
            self._stop_without_progress(epoch + 1)
        self._save(epoch, improved)
        write_results(self.history, self.run_dir)
        logger.info("epoch %d: mAP50-95 %.4f mAP50 %.4f, %.1f img/s", epoch + 1, metrics.map50_95, metrics.map50,
                    throughput)

    def _stop_without_progress(self, done: int) -> None:
        """End the run at ``done`` epochs (stored, so a resume does not continue it) once the best fitness is
        ``patience`` epochs old."""
        best = max(range(len(self.history)), key=lambda i: fitness(self.history[i]))
        stale = self.history[-1].epoch - self.history[best].epoch
        if stale >= self.cfg.patience and done < self.cfg.epochs:
            logger.info("No better mAP for %d epochs (best: epoch %d, mAP50-95 %.4f): stopping at epoch %d of %d "
                        "(--patience %d)", stale, self.history[best].epoch, self.history[best].map50_95, done,
                        self.cfg.epochs, self.cfg.patience)
            self.cfg.epochs = done

    def _fit_epochs_to_budget(self, done: int) -> None:
        """Set the epoch count (hence the LR schedule and mosaic closing) to what the remaining time
        budget allows at the mean epoch time so far (training and validation), at least ``done``."""
        spent = sum(h.seconds for h in self.history)
        remaining = self.cfg.time_budget * 60 - spent
        fitted = done + max(int(remaining // (spent / len(self.history))), 0)
        if fitted != self.cfg.epochs:
            logger.info("Time budget %.1f min: %.1f min spent, %d epochs in all", self.cfg.time_budget, spent / 60,
                        fitted)
            self.cfg.epochs = fitted


def write_results(history: list[EpochResult], run_dir: Path) -> None:
    """results.csv (written atomically; its temp file removed when the write fails) and the plots."""
    path = run_dir / "results.csv"
    tmp = path.with_suffix(".tmp")
    with writing(run_dir, "the training results"):
        try:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(EpochResult)])
                writer.writeheader()
                writer.writerows(asdict(h) for h in history)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        plot_results(history, run_dir)


def plot_results(history: list[EpochResult], run_dir: Path) -> None:
    """loss.png (the three loss terms) and map.png (validation mAP) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("box_loss", "dfl_loss", "cls_loss"):
        ax.plot(epochs, [getattr(h, name) for h in history], marker="o", label=name)
    ax.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h.map50 for h in history], marker="o", label="mAP50")
    ax.plot(epochs, [h.map50_95 for h in history], marker="o", label="mAP50-95")
    ax.set(xlabel="epoch", ylabel="mAP", title="validation mAP", ylim=(0, 1))
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "map.png", dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> Path:
    return Trainer(cfg).fit()


def resume(path: str | os.PathLike) -> Path:
    """Continue the run whose ``last.pt`` (or run folder) is ``path``, with its stored config."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    state = read_checkpoint(path)
    if "train_config" not in state:
        raise EdgeYoloError(f"{path} is not the last.pt of a training run", "pass runs/train/<name>/last.pt")
    cfg = TrainConfig.from_dict(state["train_config"])
    cfg.project, cfg.name = str(path.parent.parent), path.parent.name
    return Trainer(cfg, resume_from=path).fit()
