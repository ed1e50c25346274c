"""Errors that name the problem and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class EdgeYoloError(Exception):
    """Base of the project's user-facing errors: ``str(err)`` says what is wrong and what to do."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class ImageError(EdgeYoloError):
    """An image that cannot be read or decoded."""


class SourceError(EdgeYoloError):
    """A detection source (image file, folder, video file, camera) that does not exist or cannot be opened."""


class DatasetError(EdgeYoloError):
    """A dataset file (data.yaml, label file, annotation json) that is missing or malformed."""


class ModelError(EdgeYoloError):
    """A model or checkpoint that cannot be loaded or is not what it claims to be."""


class MissingDependencyError(EdgeYoloError):
    """An optional dependency (an extra of the package) is not installed."""

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the Python package {module!r}, which is not installed.",
                         f"pip install 'edge-yolov9[{extra}]'")
