"""The daemon's HTTP API, MJPEG stream and live page, served by the standard library only (the Pi stays small).

Routes are a fixed table: no request path ever reaches the file system. Every endpoint but
``/api/health`` needs the token when ``http.token`` is set, as ``Authorization: Bearer <token>`` or
``?token=<token>`` (an ``<img>`` cannot send headers). Request lines go to this module's logger at
debug level with their query strings masked, so the token never reaches a log.

Requests are read before they can be authorised, so reading them is bounded: a request line of
``MAX_REQUEST_LINE`` bytes (longer: 414), header lines of ``MAX_HEADER_LINE`` bytes, ``MAX_HEADERS`` of
them and ``MAX_HEAD_BYTES`` in all (more: 431), all sent within ``HEAD_TIMEOUT`` seconds (a client that
drips its request, or an idle keep-alive connection, is cut off then), and at most
``http.max_connections`` connections at once, MJPEG streams included (beyond: 503 at once).
"""

from __future__ import annotations

import errno
import hmac
import html
import io
import json
import logging
import re
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs

from edge_yolov9 import __version__
from edge_yolov9.errors import EdgeYoloError

from .config import HttpConfig
from .hub import Hub
from .stats import Stats

logger = logging.getLogger(__name__)

BOUNDARY = "edgeyolov9frame"
PART_HEADERS = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
STREAM_POLL = 0.25       # seconds a stream waits for a frame before it checks whether the server closes
CLOSE_TIMEOUT = 2.0      # seconds close() waits for open streams to end
ACCEPT_POLL = 0.1        # seconds between the accept loop's checks for close() (a select() timeout: cheap)
CLIENT_TIMEOUT = 30.0    # seconds a write to a stalled client may block
HEAD_TIMEOUT = 10.0      # seconds a client has to send a whole request head (request line and headers)
MAX_REQUEST_LINE = 8192  # bytes of the request line ("GET /path?query HTTP/1.1")
MAX_HEADER_LINE = 8192   # bytes of one header line
MAX_HEADERS = 64         # header lines of one request
MAX_HEAD_BYTES = 32768   # bytes of the request line and the headers together
DRAIN_TIME = 1.0         # seconds a refused request's unread rest is read and dropped, so the client
DRAIN_BYTES = 1 << 18    # ...gets the answer, not a connection reset (and at most this many bytes)
BUSY_BODY = b'{"error": "too many connections: try again later"}'
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(BUSY_BODY)).encode() + b"\r\nRetry-After: 5\r\nConnection: close\r\n\r\n" + BUSY_BODY)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUERY_STRING = re.compile(r"\?[^\s\"]*")
PUBLIC_PATHS = frozenset({"/api/health"})


class HttpServer:
    """The HTTP outputs of one camera; ``start()`` serves in a daemon thread, ``close()`` stops it."""

    def __init__(self, config: HttpConfig, hub: Hub, stats: Stats, camera: str, labels: Sequence[str]):
        self.config = config
        self.hub = hub
        self.stats = stats
        self.camera = camera
        self.labels = list(labels)
        self.token = config.token.get_secret_value().encode() if config.token is not None else None
        self.page = (resources.files(__package__).joinpath("live.html").read_text(encoding="utf-8")
                     .replace("{{camera}}", html.escape(camera)).encode())
        self.closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._streams: set[socket.socket] = set()
        self._streams_changed = threading.Condition()

    def start(self) -> None:
        """Bind (a port in use is an error that says what to do) and serve in a daemon thread."""
        host, port = self.config.host, self.config.port
        self.closing.clear()
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._server = _Server((host, port), family, self)
        except OSError as err:
            raise _bind_error(host, port, err) from None
        self._thread = threading.Thread(target=self._server.serve_forever, args=(ACCEPT_POLL,), name="http",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HttpServer.port is known once start() has bound it")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop accepting, end the open MJPEG streams (even those blocked on a slow client) and join."""
        if self._server is None or self._thread is None:
            return
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        with self._streams_changed:
            for connection in self._streams:
                _hang_up(connection)
            self._streams_changed.wait_for(lambda: not self._streams, CLOSE_TIMEOUT)
        self._server = None

    # ------------------------------------------------------------------ for the request handler
    def authorized(self, header: str | None, query: str) -> bool:
        """Whether the request carries the token (always, when none is configured)."""
        if self.token is None:
            return True
        offered = parse_qs(query).get("token", [])
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(credentials.strip())
        return any(hmac.compare_digest(candidate.encode(), self.token) for candidate in offered)

    def redact(self, text: str) -> str:
        """``text`` with query strings (where ``?token=`` travels) and the token itself masked."""
        text = QUERY_STRING.sub("?***", text)
        return text.replace(self.token.decode(), "***") if self.token else text

    def stream_opened(self, connection: socket.socket) -> None:
        with self._streams_changed:
            self._streams.add(connection)

    def stream_closed(self, connection: socket.socket) -> None:
        with self._streams_changed:
            self._streams.discard(connection)
            self._streams_changed.notify_all()


def _hang_up(connection: socket.socket) -> None:
    """Shut a connection down from another thread: a write blocked on it fails at once."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _bind_error(host: str, port: int, err: OSError) -> EdgeYoloError:
    where = f"{host}:{port}"
    if err.errno == errno.EADDRINUSE:
        return EdgeYoloError(f"HTTP cannot listen on {where}: the port is already in use",
                             f"stop the program that uses port {port} (`ss -ltnp 'sport = :{port}'` names it) "
                             "or set http.port to another port (0 picks a free one)")
    if err.errno == errno.EACCES:
        return EdgeYoloError(f"HTTP cannot listen on {where}: ports below 1024 need root",
                             "set http.port to 1024 or above (the default is 8090)")
    return EdgeYoloError(f"HTTP cannot listen on {where}: {err.strerror or err}",
                         "set http.host to an address of this machine (127.0.0.1, or 0.0.0.0 for every network)")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Request threads are not joined on close: an idle keep-alive or pre-connected browser socket would
    # hold close() up; MJPEG streams, the only long requests, are ended and waited for by HttpServer.close.
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, app: HttpServer):
        self.address_family = family
        self.app = app
        self._connections = 0
        self._full = False   # refusing connections (logged once per spell)
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection, if fewer than ``http.max_connections`` are open; else 503 and close,
        from the accepting thread without blocking it (the answer fits an empty socket buffer)."""
        limit = self.app.config.max_connections
        with self._connections_lock:
            admitted = self._connections < limit
            self._connections += admitted
            if not admitted and not self._full:
                logger.warning("HTTP has %d connections open, the most http.max_connections allows: new ones "
                               "get 503 until some close", limit)
            self._full = not admitted
        if not admitted:
            try:
                request.setblocking(False)
                request.send(BUSY_RESPONSE)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_ended()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_ended()

    def _connection_ended(self) -> None:
        with self._connections_lock:
            self._connections -= 1

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host, which stalls on a Pi without network."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that goes away mid-response is normal (a closed browser tab): no traceback for it."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, socket.timeout)):
            logger.debug("HTTP client %s went away: %s", client_address[0], error)
        else:
            logger.exception("HTTP request from %s failed", client_address[0])


class _Refusal(Exception):
    """A request head the server will not read on: the status to answer and why."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"edge-yolov9/{__version__}"
    timeout = CLIENT_TIMEOUT

    def version_string(self) -> str:
        return self.server_version

    @property
    def app(self) -> HttpServer:
        return self.server.app

    def handle_one_request(self) -> None:
        """The standard library's, but the head is read by :meth:`_read_head`, within the module's limits."""
        self.requestline, self.request_version, self.command = "", "", ""
        try:
            head = self._read_head()
        except _Refusal as refusal:
            self._refuse(refusal.status, refusal.reason)
            return
        if not head:
            self.close_connection = True
            return
        self.raw_requestline = head[0]
        rfile, self.rfile = self.rfile, io.BytesIO(b"".join(head[1:]))  # parse_request reads the headers here
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = rfile
        if not parsed:  # it has answered 400 (or 505)
            return
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def _read_head(self) -> list[bytes]:
        """The request line and the header lines up to the blank one, each with its line end; empty if the
        client closed, or sent nothing within ``HEAD_TIMEOUT`` (an idle keep-alive connection). Every wait for
        data is bounded by one deadline, so a client that sends a byte now and then cannot stretch it.
        Raises :class:`_Refusal` for a head over the limits, or one begun but not complete in time."""
        deadline = time.monotonic() + HEAD_TIMEOUT
        head: list[bytes] = []
        line, size = b"", 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout("request head deadline passed")
                self.connection.settimeout(remaining)
                buffered = self.rfile.peek(1)  # what is buffered, else what one recv brings
                if not buffered:
                    return []
                limit = MAX_HEADER_LINE if head else MAX_REQUEST_LINE
                end = buffered.find(b"\n", 0, limit + 1 - len(line))
                line += self.rfile.read(end + 1 if end >= 0 else min(len(buffered), limit + 1 - len(line)))
                if end < 0:
                    if len(line) > limit:
                        raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE if head else
                                       HTTPStatus.REQUEST_URI_TOO_LONG,
                                       f"{'a header line' if head else 'the request line'} is over {limit} bytes")
                    continue
                head.append(line)
                size += len(line)
                if line in (b"\r\n", b"\n"):
                    return head
                line = b""
                if size > MAX_HEAD_BYTES:
                    raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                   f"the headers are over {MAX_HEAD_BYTES} bytes")
                if len(head) > MAX_HEADERS + 1:  # the request line is no header
                    raise _Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {MAX_HEADERS} headers")
        except socket.timeout:
            if head or line:
                raise _Refusal(HTTPStatus.REQUEST_TIMEOUT,
                               f"the request was not complete within {HEAD_TIMEOUT:g} s") from None
            return []
        finally:
            self.connection.settimeout(self.timeout)

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        """Answer ``status`` and hang up. The unread rest of the request is read and dropped for a moment
        first: closing a socket with unread data resets the connection, and the client would not see why."""
        self.close_connection = True
        self._send_json({"error": reason}, status, {"Connection": "close"})
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + DRAIN_TIME, 0
            while drained < DRAIN_BYTES and time.monotonic() < deadline:
                self.connection.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        route = ROUTES.get(path)
        if route is None:
            self._send_json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        elif path not in PUBLIC_PATHS and not self.app.authorized(self.headers.get("Authorization"), query):
            self._send_json({"error": "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>"},
                            HTTPStatus.UNAUTHORIZED, {"WWW-Authenticate": 'Bearer realm="edge-yolov9"'})
        else:
            route(self)

    do_HEAD = do_GET

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._send_json({"error": f"method {self.command} not allowed"}, HTTPStatus.METHOD_NOT_ALLOWED,
                        {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = _method_not_allowed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class names it so)
        logger.debug("HTTP %s %s", self.address_string(), self.app.redact(format % args))

    # ------------------------------------------------------------------ responses
    def _send(self, status: int, content_type: str, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers(headers)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, data: Any, status: int = HTTPStatus.OK, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, "application/json", json.dumps(data).encode(), headers)

    def _common_headers(self, headers: Mapping[str, str] | None) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    # ------------------------------------------------------------------ routes
    def _page(self) -> None:
        # The page's URL may carry ?token=: no Referer may take it elsewhere.
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.app.page, {"Referrer-Policy": "no-referrer"})

    def _health(self) -> None:
        stats = self.app.stats
        healthy = stats.source_online and stats.detector_online
        self._send_json({"status": "ok" if healthy else "degraded",
                         "source": "online" if stats.source_online else "offline",
                         "detector": "online" if stats.detector_online else "offline"},
                        HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE)

    def _stats(self) -> None:
        self._send_json(self.app.stats.to_dict())

    def _metrics(self) -> None:
        self._send(HTTPStatus.OK, PROMETHEUS_TYPE, self.app.stats.prometheus().encode())

    def _labels(self) -> None:
        self._send_json(self.app.labels)

    def _latest_detections(self) -> None:
        snapshot = self.app.hub.latest()
        if snapshot is None:
            self._no_frame_yet()
        else:
            self._send_json({"camera": self.app.camera, **snapshot.to_dict()})

    def _latest_jpeg(self) -> None:
        snapshot = self.app.hub.latest()
        if snapshot is None:
            self._no_frame_yet()
        else:
            self._send(HTTPStatus.OK, "image/jpeg", self.app.hub.annotated_jpeg(snapshot))

    def _no_frame_yet(self) -> None:
        self._send_json({"error": "no frame detected yet"}, HTTPStatus.SERVICE_UNAVAILABLE)

    def _stream(self) -> None:
        """Annotated frames as multipart JPEG parts, each new frame once, at most ``stream_fps`` a second.

        The headers of the next part go out right behind each frame (so parts carry no Content-Length):
        Chromium shows a part only once the next part's headers arrive, and would otherwise show every
        frame one frame late, and the last one, of a camera gone still or offline, never."""
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self._common_headers(None)
        if self.command == "HEAD":
            return
        app, interval = self.app, 1.0 / self.app.config.stream_fps
        app.stream_opened(self.connection)
        try:
            self.wfile.write(PART_HEADERS)
            sent_frame = -1
            while not app.closing.is_set():
                snapshot = app.hub.wait_for_newer(sent_frame, STREAM_POLL)
                if snapshot is None:
                    continue
                started = time.monotonic()
                self.wfile.write(app.hub.annotated_jpeg(snapshot) + b"\r\n" + PART_HEADERS)
                sent_frame = snapshot.frame_id
                app.closing.wait(interval - (time.monotonic() - started))
        except OSError as err:  # the client went away, or close() hung up on it
            logger.debug("MJPEG stream to %s ended: %s", self.address_string(), err)
        finally:
            app.stream_closed(self.connection)


ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/": _Handler._page,
    "/api/health": _Handler._health,
    "/api/stats": _Handler._stats,
    "/metrics": _Handler._metrics,
    "/api/labels": _Handler._labels,
    "/api/detections/latest": _Handler._latest_detections,
    "/api/latest.jpg": _Handler._latest_jpeg,
    "/api/stream.mjpeg": _Handler._stream,
}
