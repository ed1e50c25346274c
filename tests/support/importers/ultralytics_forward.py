"""Run an Ultralytics checkpoint with the real Ultralytics classes; dump its raw per-level head maps.

Usage: ultralytics_forward.py CHECKPOINT INPUT.npz OUTPUT.npz -- run only by ultralytics_oracle.py,
in a subprocess whose PYTHONPATH holds the oracle's own install. ``Detect`` in eval mode returns
``(y, x)``: ``x`` is the per-level list of cat(box bins, class logits), before any decoding.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def main(checkpoint: str, inputs: str, outputs: str) -> None:
    import ultralytics.nn.tasks  # noqa: F401  (the classes the pickle names)

    # Trusted on purpose: this is the oracle, running the genuine code on the genuine file, in isolation.
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    with np.load(inputs) as data:
        image = torch.from_numpy(data["image"])
    with torch.no_grad():
        _, levels = model(image)
    np.savez(outputs, **{f"level{i}": level.numpy() for i, level in enumerate(levels)})


if __name__ == "__main__":
    main(*sys.argv[1:4])
