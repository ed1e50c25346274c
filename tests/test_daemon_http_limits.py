"""The daemon's HTTP server against hostile or broken clients, over real sockets: over-long or too many
headers, a client that drips its request, more connections than allowed, and a flood of huge headers
measured in the memory of a server process of its own."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import numpy as np
import pytest

from edge_yolov9.daemon.http_server import HEAD_TIMEOUT, MAX_HEADER_LINE, MAX_HEADERS, MAX_REQUEST_LINE, HttpServer
from edge_yolov9.daemon.hub import Hub, Snapshot
from support.waiting import wait_until
from test_daemon_http import serve, stats  # noqa: F401 (fixtures)

TOKEN = "tok-5f3a9c81e2"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def serve_with_token(serve) -> Callable[..., tuple[HttpServer, Hub]]:
    """``serve(**http_config)`` of test_daemon_http, with the token on."""
    return lambda **config: serve(token=TOKEN, **config)


def get(port: int, path: str = "/api/stats") -> int:
    """The status of an authorised GET."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=AUTHORIZED)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def answer(port: int, head: bytes) -> bytes:
    """What the server answers to ``head`` sent on a fresh connection, read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        try:
            connection.sendall(head)
        except OSError:  # it may hang up before taking all of an oversized head: its answer is still there
            pass
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def publish(hub: Hub, number: int) -> None:
    hub.publish(Snapshot(number, time.time(), np.full((48, 64, 3), number * 40 % 256, np.uint8), ()))


def open_stream(port: int) -> tuple[socket.socket, bytes]:
    """An MJPEG stream's connection and the first bytes of its answer (its headers, then the first part)."""
    stream = socket.create_connection(("127.0.0.1", port), timeout=30)
    stream.sendall(f"GET /api/stream.mjpeg?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return stream, stream.recv(65536)


def next_part(stream: socket.socket) -> bytes:
    """Bytes of the stream up to the end of the next JPEG."""
    received = b""
    while b"\xff\xd9" not in received:
        chunk = stream.recv(65536)
        assert chunk, "the stream ended"
        received += chunk
    return received


# --------------------------------------------------------------------------- limits of the request head
def test_an_over_long_request_line_gets_414(serve_with_token):
    server, _ = serve_with_token()
    reply = answer(server.port, b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 414 ") and b'"error": "the request line is over 8192 bytes"' in reply


@pytest.mark.parametrize("headers, why", [
    ([b"X-Big: " + b"a" * MAX_HEADER_LINE], b"a header line is over 8192 bytes"),
    ([b"X-%d: v" % n for n in range(MAX_HEADERS + 1)], b"more than 64 headers"),
    ([b"X-%d: " % n + b"a" * 6000 for n in range(6)], b"the headers are over 32768 bytes"),
])
def test_too_large_headers_get_431(serve_with_token, headers, why):
    server, _ = serve_with_token()
    reply = answer(server.port, b"GET /api/health HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 431 ") and why in reply


def test_requests_within_the_limits_are_served(serve_with_token):
    server, _ = serve_with_token()
    headers = b"".join(b"X-%d: " % n + b"a" * 400 + b"\r\n" for n in range(MAX_HEADERS - 1))
    head = f"GET /api/labels HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode() + headers + b"\r\n"
    assert len(head) < 32768
    reply = answer(server.port, head)  # it closes: the standard library's HTTP/1.0 answers close
    assert reply.startswith(b"HTTP/1.0 200 ") and reply.endswith(b'["ball"]')


def test_a_client_that_drips_its_request_is_cut_off_and_streams_go_on(serve_with_token):
    server, hub = serve_with_token()
    publish(hub, 1)
    stream, first = open_stream(server.port)
    assert first.startswith(b"HTTP/1.0 200 ")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT + 30)
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT + 30)
    stopped = threading.Event()

    def drip() -> None:  # a byte a second: every single wait is short, the whole request never ends
        for byte in b"GET /api/health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if stopped.wait(1.0):
                return
            try:
                slow.send(bytes([byte]))
            except OSError:
                return

    dripping = threading.Thread(target=drip, daemon=True)
    started = time.monotonic()
    dripping.start()
    try:
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
        elapsed = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.0 408 ") and HEAD_TIMEOUT - 1 < elapsed < HEAD_TIMEOUT + 20
        assert silent.recv(1) == b""  # one that never sends is closed too (an idle keep-alive connection)
    finally:
        stopped.set()
        dripping.join()
        slow.close()
        silent.close()
    publish(hub, 2)  # the stream, older than the head's deadline, still delivers
    assert next_part(stream)
    stream.close()
    assert get(server.port) == 200


def test_connections_over_the_limit_get_503_and_streams_keep_theirs(serve_with_token):
    server, hub = serve_with_token(max_connections=4)
    publish(hub, 1)
    stream, first = open_stream(server.port)
    assert first.startswith(b"HTTP/1.0 200 ")
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(3)]
    try:
        for connection in idle:
            connection.sendall(b"GET /api/stats HTTP/1.1\r\n")  # a head begun, never finished
        refused = answer(server.port, b"")
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too many connections" in refused
        publish(hub, 2)
        assert next_part(stream)  # the admitted stream is served on
    finally:
        for connection in idle:
            connection.close()
    wait_until(lambda: get(server.port) == 200, 30, "a request to be served once connections closed")
    stream.close()


# --------------------------------------------------------------------------- a flood, in a process of its own
SERVER = f"""
import sys, time
from edge_yolov9.daemon.config import HttpConfig
from edge_yolov9.daemon.http_server import HttpServer
from edge_yolov9.daemon.hub import Hub
from edge_yolov9.daemon.stats import Stats
server = HttpServer(HttpConfig(port=0, token={TOKEN!r}), Hub(), Stats("garage", "0", "0.1.0"), "garage", ["ball"])
server.start()
print(server.port, flush=True)
sys.stdin.read()  # until the test closes it
"""


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def test_a_flood_of_huge_headers_leaves_memory_bounded_and_others_served():
    """50 connections, each sending 98 header lines of 60 KB (just under the standard library's own limits)
    before any token is checked: the daemon once grew by 1.8 GB on it."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(server.stdout.readline())
        assert get(port) == 200
        before = peak_memory(server.pid)
        pad = b"a" * 60_000

        flooding = threading.Event()

        def flood(number: int) -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
                    connection.sendall(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n")
                    flooding.set()
                    for line in range(98):
                        connection.sendall(b"X-Pad-%d-%d: " % (number, line) + pad + b"\r\n")
                    connection.sendall(b"\r\n")
                    connection.recv(1024)
            except OSError:  # refused mid-way: the point
                pass

        flooders = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(50)]
        for thread in flooders:
            thread.start()
        assert flooding.wait(60)
        assert get(port) == 200  # during the flood
        for thread in flooders:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in flooders)
        assert get(port) == 200  # and after
        grown = peak_memory(server.pid) - before
        assert grown < 100 * 2**20, f"the server grew by {grown / 2**20:.0f} MB"
    finally:
        server.stdin.close()
        server.kill()
        server.wait(timeout=30)
