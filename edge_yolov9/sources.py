"""Frames to detect in: an image, a folder of images, a video file or a camera (OpenCV, optional).

Every kind of source becomes the same stream of :class:`Frame`, so batches over folders, videos,
cameras and in-memory images are handled by one loop (``Detector.detect_many``). A frame that
cannot be read is a Frame with an ``error``, not an exception: one bad file does not end a batch.
A source that cannot be opened at all raises a :class:`SourceError` that says how to fix it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Union

import numpy as np

from .errors import EdgeYoloError, ImageError, MissingDependencyError, SourceError
from .preprocess import IMAGE_SUFFIXES, ImageInput, read_image, to_rgb

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
# A source as the CLI takes it: a path (image, folder, video file) or a camera index.
Source = Union[str, os.PathLike, int]
REENCODE = ("the file is corrupt or its codec is not in this OpenCV build; re-encode it, "
            "e.g. `ffmpeg -i {path} -c:v libx264 out.mp4`")


class Frame(NamedTuple):
    """One frame: ``image`` (RGB), or the ``error`` that prevented reading it.

    ``name`` is what reports call it (the image's path, or 'clip.mp4#12' / 'camera0#12' for the 13th
    frame of a stream); ``stem`` names derived files, unique within the source: a relative path without
    suffix ('sub/photo' for a folder's sub/photo.jpg).
    ``full_size`` is an image file's (width, height), which ``image`` may be a reduced decode of (see
    :func:`~edge_yolov9.preprocess.read_image`); boxes are reported in the full size's pixels.
    """

    name: str
    stem: str
    image: np.ndarray | None
    error: EdgeYoloError | None = None
    full_size: tuple[int, int] | None = None


def opencv(purpose: str = "Reading video files and cameras"):
    """The cv2 module, or a MissingDependencyError that names the extra to install."""
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError("cv2", "video", purpose) from None
    return cv2


def _camera_index(source: Source) -> int | None:
    if isinstance(source, int):
        return source
    return int(source) if isinstance(source, str) and source.isdigit() else None


def kind_of(source: Source) -> str:
    """'image', 'folder', 'video' or 'camera'; a SourceError when the path does not exist."""
    if _camera_index(source) is not None:
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SourceError(f"Source not found: {path}", "pass an image, a folder, a video file or a camera index")
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def describe(source: Source) -> tuple[str, int | None]:
    """The kind of ``source`` and its frame count when known (none for cameras and some video containers)."""
    kind = kind_of(source)
    if kind == "folder":
        return kind, len(folder_images(Path(source)))
    if kind == "video":
        cv2 = opencv()
        capture = cv2.VideoCapture(os.fspath(source))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        return kind, count if count > 0 else None
    return kind, (1 if kind == "image" else None)


def folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in sorted order."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read(name: str, stem: str, image: ImageInput, bgr: bool = False, needed: tuple[int, int] | None = None) -> Frame:
    try:
        if isinstance(image, (str, os.PathLike)):
            rgb, full_size = read_image(image, needed)
            return Frame(name, stem, rgb, full_size=full_size)
        return Frame(name, stem, to_rgb(image, bgr))
    except ImageError as err:
        return Frame(name, stem, None, err)


def capture_frames(capture, name: str = "the video") -> Iterator[np.ndarray]:
    """RGB frames of an opened ``cv2.VideoCapture`` until a read fails; the capture is released at the end.
    A file that ends before the frame count its container declares is reported (a truncated download or
    copy otherwise passes for a short clip)."""
    declared = int(capture.get(opencv().CAP_PROP_FRAME_COUNT))  # 0 or -1 for cameras and streams
    decoded = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            decoded += 1
            yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        capture.release()
    if 0 < decoded < declared:
        logger.warning("%s ended after %d of the %d frames it declares: the file is truncated or corrupt from "
                       "frame %d on; copy it again, or re-encode what is left", name, decoded, declared, decoded)


def _stream_frames(target: str | int, name: str, stem: str) -> Iterator[Frame]:
    cv2 = opencv()
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        if isinstance(target, int):
            raise SourceError(f"Cannot open camera {target}",
                              "list the cameras with `ls /dev/video*` (or `v4l2-ctl --list-devices`) and pass an "
                              "existing index; check that no other program holds the camera")
        raise SourceError(f"Cannot open video {target}", REENCODE.format(path=target))
    index = -1
    with contextlib.closing(capture_frames(capture, name)) as frames:  # released when the caller stops early too
        for index, rgb in enumerate(frames):
            yield Frame(f"{name}#{index}", f"{stem}_{index:06d}", rgb)
    if index < 0 and not isinstance(target, int):
        raise SourceError(f"No frame of video {target} could be decoded", REENCODE.format(path=target))


def iter_frames(source: Source, needed: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Frames of ``source`` in order; an unreadable image becomes a Frame with an error, not an exception.
    ``needed``: the network input's (height, width), for reduced decoding of very large JPEGs."""
    kind = kind_of(source)
    if kind == "camera":
        index = _camera_index(source)
        yield from _stream_frames(index, f"camera{index}", f"camera{index}")
    elif kind == "video":
        path = Path(source)
        yield from _stream_frames(os.fspath(path), path.name, path.stem)
    elif kind == "image":
        path = Path(source)
        yield _read(str(path), path.stem, path, needed=needed)
    else:
        folder = Path(source)
        paths = folder_images(folder)
        if not paths:
            raise SourceError(f"No images in folder {folder}", f"add images ({' '.join(IMAGE_SUFFIXES)}) or pass "
                                                               "another folder")
        used: set[str] = set()
        for path in paths:
            relative = path.relative_to(folder)
            yield _read(str(path), _claim_stem(used, relative.with_suffix("").as_posix(), relative.suffix), path,
                        needed=needed)


def _claim_stem(used: set[str], base: str, suffix: str) -> str:
    """``base`` as an output name not in ``used`` (then added to it): where two images would share it
    ('z' for z.jpg and z.png), the suffix is kept ('z_png'), then a number."""
    candidates = itertools.chain((base, f"{base}_{suffix.lstrip('.')}"), (f"{base}_{n}" for n in itertools.count(2)))
    stem = next(candidate for candidate in candidates if candidate not in used)
    used.add(stem)
    return stem


def image_frames(images: Iterable[ImageInput], bgr: bool = False,
                 needed: tuple[int, int] | None = None) -> Iterator[Frame]:
    """Frames of in-memory images or image paths, in order; ``bgr`` marks arrays in OpenCV's order."""
    used: set[str] = set()
    for index, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            yield _read(os.fspath(image), _claim_stem(used, path.stem, path.suffix), image, needed=needed)
        else:
            yield _read(f"image#{index}", f"image_{index:06d}", image, bgr)
