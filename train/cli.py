"""Sub-commands of the ``train`` package. Heavy imports (torch) happen inside the handlers, so that
``edge-yolov9 --help`` stays fast and a missing extra gives a clear message."""

from __future__ import annotations

import argparse

from edge_yolov9.cli import add_command, print_result
from edge_yolov9.errors import MissingDependencyError


def require_torch(purpose: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("torch", "train", purpose) from None


def _models(args: argparse.Namespace) -> int:
    require_torch("Listing the model zoo")
    from .models import create_model, list_models
    from .models.deploy import deploy_model
    from .models.profile import count_params, profile_model

    rows = []
    for name in list_models(args.filter):
        model = create_model(name, num_classes=args.num_classes)
        profile = profile_model(deploy_model(model), args.imgsz).to_dict()
        profile["train_params"] = count_params(model)
        profile["aux"] = model.cfg.aux
        rows.append(profile)

    def render(rows: list[dict]) -> str:
        lines = [f"{'model':<10} {'aux':<6} {'deploy params':>14} {'GFLOPs@' + str(args.imgsz):>12} {'train params':>13}"]
        lines += [f"{r['name']:<10} {r['aux']:<6} {r['params']:>14,} {r['gflops']:>12.2f} {r['train_params']:>13,}"
                  for r in rows]
        return "\n".join(lines)

    print_result(rows, args.json, render)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = add_command(
        subparsers, "models", _models, help="list the model zoo with parameters and GFLOPs",
        description="List the registered model variants. Parameters and GFLOPs are those of the deploy form "
                    "(auxiliary branch dropped, BatchNorm folded, RepConv fused), as published figures are; "
                    "'train params' counts the auxiliary branch too.")
    models.add_argument("--filter", default="*", help="shell-style pattern on model names")
    models.add_argument("--imgsz", type=int, default=640, help="square input size for GFLOPs")
    models.add_argument("--num-classes", type=int, default=80, help="number of classes of the head")
    models.add_argument("--json", action="store_true", help="print JSON")
