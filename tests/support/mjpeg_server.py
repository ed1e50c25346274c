"""A real MJPEG-over-HTTP camera for the daemon's tests: it can be stopped and started again on the same port.

Serves ``/stream.mjpg`` (multipart/x-mixed-replace, as IP cameras do) cycling through JPEG files at
``fps``; OpenCV's FFmpeg backend reads it like any network camera.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "edgeyolov9frame"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MjpegCamera:
    def __init__(self, images: list[Path], fps: float = 10.0, port: int | None = None):
        self.frames = [path.read_bytes() for path in images]
        self.fps = fps
        self.port = port or free_port()
        self.served = 0
        self._server: ThreadingHTTPServer | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegCamera":
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                index = 0
                try:
                    while not camera._stopped.is_set():
                        jpeg = camera.frames[index % len(camera.frames)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        camera.served += 1
                        index += 1
                        time.sleep(1 / camera.fps)
                except OSError:
                    return

            def log_message(self, *args) -> None:
                pass

        self._stopped.clear()
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The camera goes away: open streams are cut and new connections refused."""
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
