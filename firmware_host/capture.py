"""Frames from the configured source, always the newest, with reconnects.

A live source (camera, Pi camera, stream) is read as fast as it delivers; each frame replaces the
one before if the detector has not taken it yet, and the replaced frame is counted as dropped:
nothing queues, so a slow detector never makes the results late. A finite source (video file,
folder of images) is read at the detector's pace instead: nothing in it goes stale, so no frame
is skipped; an image of a folder that cannot be read (corrupt, too many pixels) is reported and
skipped, and a folder with no readable image at all is an error, as is a finite source that cannot be
opened. A live source that fails to open, stops delivering or errors is reopened with exponential
back-off (``reconnect_initial`` doubling up to ``reconnect_max``) and reported offline meanwhile; a
read that hangs longer than ``stall_timeout`` is abandoned and the source reopened.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_yolov9.errors import EdgeYoloError, ImageError, SourceError
from edge_yolov9.preprocess import load_image
from edge_yolov9.sources import VIDEO_SUFFIXES, capture_frames, folder_images, opencv

from .config import SourceConfig, redact
from .stats import Stats

logger = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
PICAMERA = "picamera2"


@dataclass(frozen=True)
class CapturedFrame:
    """A frame taken from the source: ``image`` (RGB), or the ``error`` that kept it unread."""

    number: int
    timestamp: float
    name: str
    image: np.ndarray | None
    error: EdgeYoloError | None = None


def source_kind(uri: str) -> str:
    """What ``uri`` names: 'picamera', 'stream', 'folder', 'camera', 'video' (a file with a video suffix),
    'file' (another file, tried with OpenCV) or 'missing'. Checked again at each reopening: a camera or
    file may appear later."""
    path = Path(uri)
    if uri == PICAMERA:
        return "picamera"
    if uri.startswith(STREAM_SCHEMES):
        return "stream"
    if path.is_dir():
        return "folder"
    if uri.isdigit() or (uri.startswith("/dev/") and path.exists()):
        return "camera"
    if path.is_file():
        return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "file"
    return "file" if path.exists() else "missing"


def is_live(uri: str) -> bool:
    """Cameras and streams are live (frames go stale); video files and folders are not."""
    return source_kind(uri) not in ("folder", "video")


class FrameSlot:
    """One frame, the newest. ``put`` of a live frame replaces an unread one; of a file's frame, waits."""

    def __init__(self, stats: Stats):
        self._frame: CapturedFrame | None = None
        self._changed = threading.Condition()
        self._stats = stats

    def put(self, frame: CapturedFrame, wait: bool, stop: threading.Event) -> None:
        with self._changed:
            while wait and self._frame is not None and not stop.is_set():
                self._changed.wait(0.2)
            if self._frame is not None:
                self._stats.frame_dropped()
            self._frame = frame
            self._changed.notify_all()

    def take(self, timeout: float) -> CapturedFrame | None:
        with self._changed:
            if self._frame is None:
                self._changed.wait(timeout)
            frame, self._frame = self._frame, None
            self._changed.notify_all()
            return frame


def _opencv_frames(uri: str, config: SourceConfig) -> Iterator[np.ndarray]:
    """RGB frames from a camera index, /dev/video*, a stream URL or a video file, through OpenCV."""
    cv2 = opencv("Reading cameras, streams and video files")
    target: str | int = int(uri) if uri.isdigit() else uri
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.stall_timeout * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(config.stall_timeout * 1000)]
    if isinstance(target, str) and target.startswith(STREAM_SCHEMES):
        capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, timeouts)
    else:
        capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"Cannot open {redact(uri)}",
                          "check the URL, the camera index (`ls /dev/video*`) or the file; check that no other "
                          "program holds the camera")
    yield from capture_frames(capture)


def _picamera_frames() -> Iterator[np.ndarray]:
    """RGB frames from the Raspberry Pi camera (libcamera through picamera2)."""
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise SourceError("The Pi camera needs picamera2, which this Python cannot import",
                          "sudo apt install python3-picamera2, and create the venv with "
                          "`python3 -m venv --system-site-packages`") from None
    camera = Picamera2()
    try:
        # 'RGB888' is BGR in memory (libcamera's naming): convert once here.
        camera.configure(camera.create_video_configuration(main={"size": (1280, 720), "format": "RGB888"}))
        camera.start()
        while True:
            yield np.ascontiguousarray(camera.capture_array("main")[:, :, ::-1])
    finally:
        camera.close()


class SourceReader:
    """Reads the source in a thread into a :class:`FrameSlot`; see the module docstring."""

    def __init__(self, config: SourceConfig, slot: FrameSlot, stats: Stats,
                 on_status: Callable[[bool], None] = lambda online: None):
        self.config = config
        self.slot = slot
        self.stats = stats
        self.on_status = on_status
        self.live = is_live(config.uri)
        self.finished = threading.Event()   # a finite source without `loop` has been read to its end
        self.failure: EdgeYoloError | None = None   # why a finite source ended early, if it did
        self.last_frame = time.monotonic()
        self._stop = threading.Event()
        self._generation = 0
        self._online = False
        self._number = 0
        self._last_delivery = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._generation += 1
        self.last_frame = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(self._generation,), name="source-reader",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_stall(self) -> None:
        """Reopen a live source whose read has hung for ``stall_timeout`` (called by the daemon's loop)."""
        if not self.live or not self._online or time.monotonic() - self.last_frame < self.config.stall_timeout:
            return
        self._set_online(False, f"no frame for {self.config.stall_timeout:g} s")
        logger.error("No frame from %s in %g s: reopening it", redact(self.config.uri), self.config.stall_timeout)
        self.start()  # the hung read belongs to an older generation, which exits when (if) it returns

    # ------------------------------------------------------------------ the reading thread
    def _run(self, generation: int) -> None:
        delay = self.config.reconnect_initial
        while not self._stop.is_set() and generation == self._generation:
            delivered, error = False, None
            try:
                for frame in self._frames():
                    if self._stop.is_set() or generation != self._generation:
                        return
                    delivered = True
                    self._deliver(frame)
            except EdgeYoloError as err:
                error = err
            except Exception as err:  # a camera driver error must not end the daemon's source for good
                error = SourceError(redact(f"{type(err).__name__}: {err}"))
            if generation != self._generation:
                return
            if not self.live:
                if error is None and self.config.loop:
                    continue
                self._set_online(False, error.problem if error else "ended")
                if error:
                    logger.error("Source %s: %s", redact(self.config.uri), error.problem)
                else:
                    logger.info("Source %s ended", redact(self.config.uri))
                self.failure = error
                self.finished.set()
                return
            problem = error.problem if error else "the stream ended"
            if delivered:
                delay = self.config.reconnect_initial
            self._set_online(False, problem)
            logger.error("Source %s: %s; reopening in %g s", redact(self.config.uri), problem, delay)
            if self._stop.wait(delay):
                return
            self.stats.source_status(False, reconnect=True)
            delay = min(delay * 2, self.config.reconnect_max)

    def _frames(self) -> Iterator[CapturedFrame]:
        uri = self.config.uri
        kind = source_kind(uri)
        if kind == "picamera":
            return self._numbered(_picamera_frames(), "picamera")
        if kind == "folder":
            return self._folder(Path(uri))
        if kind == "missing":
            raise SourceError(f"Source not found: {redact(uri)}", "give a camera index, /dev/videoN, a stream URL, "
                                                                  "a video file, a folder of images or 'picamera2'")
        return self._numbered(_opencv_frames(uri, self.config), Path(uri).name if not self.live else "frame")

    def _numbered(self, images: Iterator[np.ndarray], name: str) -> Iterator[CapturedFrame]:
        for image in images:
            self._number += 1
            yield CapturedFrame(self._number, time.time(), f"{name}#{self._number}", image)

    def _folder(self, folder: Path) -> Iterator[CapturedFrame]:
        """Each image of ``folder``; one that cannot be read is a frame with its error (the daemon reports and
        skips it), whatever the decoder raised (a corrupt file, more pixels than Pillow allows)."""
        paths = folder_images(folder)
        if not paths:
            raise SourceError(f"No images in folder {folder}", "add images or point source.uri elsewhere")
        readable = 0
        for path in paths:
            self._number += 1
            try:
                image, error = load_image(path), None
            except EdgeYoloError as err:
                image, error = None, err
            except Exception as err:
                image, error = None, ImageError(f"Cannot read image {path}: {type(err).__name__}: {err}",
                                                "re-export the image or remove it from the folder")
            readable += error is None
            yield CapturedFrame(self._number, time.time(), str(path), image, error)
        if not readable:
            raise SourceError(f"None of the {len(paths)} images in folder {folder} can be read",
                              "the daemon's log names each and why; replace them or point source.uri elsewhere")

    def _deliver(self, frame: CapturedFrame) -> None:
        now = time.monotonic()
        self.last_frame = now
        if frame.error is None:
            self._set_online(True)
            self.stats.frame_grabbed()
        if self.live and self.config.fps and now - self._last_delivery < 1 / self.config.fps:
            self.stats.frame_dropped()  # read anyway, so the camera's own buffer never fills with old frames
            return
        self._last_delivery = now
        self.slot.put(frame, wait=not self.live, stop=self._stop)

    def _set_online(self, online: bool, problem: str | None = None) -> None:
        self.stats.source_status(online, error=problem)
        if online != self._online:
            self._online = online
            self.on_status(online)


SOURCE_NAMES = {"stream": "stream", "folder": "folder", "camera": "camera", "video": "video file",
                "file": "video file", "missing": "source"}


def describe_source(uri: str) -> str:
    """How the logs name the source: kind and (redacted) location."""
    kind = source_kind(uri)
    return "Pi camera" if kind == "picamera" else f"{SOURCE_NAMES[kind]} {redact(uri)}"
