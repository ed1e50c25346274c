"""Errors that name the problem and the fix; the CLI prints them without a traceback."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
from typing import Iterator


class EdgeYoloError(Exception):
    """Base of the project's user-facing errors: ``str(err)`` says what is wrong and what to do."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)

    def __reduce__(self):
        """Pickled whole (problem and fix, whatever the subclass's own arguments): an error raised in a worker
        process reaches the user as it was raised."""
        return _rebuild_error, (type(self), self.problem, self.fix)


def _rebuild_error(cls: type[EdgeYoloError], problem: str, fix: str | None) -> EdgeYoloError:
    error = cls.__new__(cls)
    EdgeYoloError.__init__(error, problem, fix)
    return error


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


def require(module: str, extra: str, purpose: str, package: str | None = None) -> None:
    """Import ``module``, or raise the MissingDependencyError that names the extra installing it (``package``:
    its name on PyPI when that differs), so a command says what to install instead of a traceback."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package or module, extra, purpose) from None


class OutputError(EdgeYoloError):
    """A file that cannot be written: a full disk, a read-only file system, a missing folder, no permission."""


def output_error(err: OSError, path: str | os.PathLike, what: str) -> OutputError:
    """The OutputError for ``err`` raised while writing ``what`` to ``path``, with the fix for its cause."""
    fixes = {
        errno.ENOSPC: ("the disk is full", "free some space (`df -h` shows which disk) and run again"),
        errno.EDQUOT: ("the disk quota is used up", "free some space or ask for a larger quota, and run again"),
        errno.EFBIG: ("the file is larger than this process may write", "raise the file size limit (`ulimit -f`) "
                                                                         "or write to another disk"),
        errno.EROFS: ("the file system is read-only", "write somewhere else"),
        errno.EACCES: ("permission denied", "write somewhere you may write, or fix the folder's permissions"),
        errno.EPERM: ("permission denied", "write somewhere you may write, or fix the folder's permissions"),
        errno.ENOENT: ("its folder does not exist", "create the folder first, or pick another path"),
        errno.ENOTDIR: ("a part of the path is a file, not a folder", "pick another path"),
        errno.EISDIR: ("it is a folder", "pass a file name"),
    }
    cause, fix = fixes.get(err.errno, (err.strerror or str(err), "check the path and the disk"))
    return OutputError(f"Cannot write {what} to {os.fspath(path)}: {cause}", fix)


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an OSError inside the block into the OutputError that says what to do."""
    try:
        yield
    except OSError as err:
        raise output_error(err, path, what) from None
