"""Frames to detect in: an image, a folder of images, a video file or a camera (OpenCV, optional)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from .errors import EdgeYoloError, ImageError, MissingDependencyError
from .preprocess import IMAGE_SUFFIXES, load_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class Frame(NamedTuple):
    """One frame: ``image`` (RGB) or the ``error`` that prevented reading it."""

    name: str
    image: np.ndarray | None
    error: EdgeYoloError | None = None


def _opencv():
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("cv2", "video", "Reading video files and cameras") from None
    return cv2


def describe(source: str) -> tuple[str, int | None]:
    """The kind of ``source`` ('image', 'folder', 'video', 'camera') and its frame count when known."""
    if source.isdigit():
        return "camera", None
    path = Path(source)
    if path.is_dir():
        return "folder", len(folder_images(path))
    if not path.exists():
        raise EdgeYoloError(f"Source not found: {source}", "pass an image, a folder, a video file or a camera index")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        capture = _opencv().VideoCapture(str(path))
        count = int(capture.get(7))  # CAP_PROP_FRAME_COUNT
        capture.release()
        return "video", count if count > 0 else None
    return "image", 1


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _video_frames(target: str | int, name: str) -> Iterator[Frame]:
    cv2 = _opencv()
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        raise EdgeYoloError(f"Cannot open {name}", "check the file or the camera index (`ls /dev/video*`)")
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield Frame(f"{name}#{index}", np.ascontiguousarray(bgr[:, :, ::-1]))
            index += 1
    finally:
        capture.release()


def iter_frames(source: str) -> Iterator[Frame]:
    """Frames of ``source`` in order; an unreadable image becomes a Frame with an error, not an exception."""
    kind, _ = describe(source)
    if kind == "camera":
        yield from _video_frames(int(source), f"camera{source}")
    elif kind == "video":
        yield from _video_frames(os.fspath(source), Path(source).name)
    else:
        paths = folder_images(Path(source)) if kind == "folder" else [Path(source)]
        for path in paths:
            try:
                yield Frame(str(path), load_image(path))
            except ImageError as err:
                yield Frame(str(path), None, err)
