"""Training, validation and checkpoint import for edge-yolov9 (needs the ``train`` extra: torch)."""
