"""What the converter's libraries (litert-torch, torchao, TensorFlow) do to a terminal, contained: the hundreds of
lines they print on standard error, hidden at the file-descriptor level where native code writes too; and a
Ctrl-C while they load, which their imports do not survive cleanly (a KeyboardInterrupt in the middle of
``import litert_torch`` ends in a RecursionError, or is swallowed and the command runs on), held back until the
import is done; and a Ctrl-C that Python itself drops, raised again at the conversion's next step."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
from typing import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def hidden_stderr(tail: int = 20) -> Iterator[None]:
    """File descriptor 2 goes to a temporary file while the block runs; if the block raises, the last ``tail``
    lines written there are logged, as the reason may be among them."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except Exception:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            lines = sink.read().decode("utf-8", "replace").strip().splitlines()[-tail:]
            if lines:
                logger.error("Output before the failure:\n%s", "\n".join(lines))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C while the block runs takes effect when it ends: SIGINT is only noted meanwhile, then raised again
    through the handler there was. Python handles signals on the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)


_interrupted = threading.Event()


@contextlib.contextmanager
def sigint_remembered() -> Iterator[None]:
    """A Ctrl-C while the block runs raises KeyboardInterrupt as usual and is remembered, so that
    :func:`raise_if_interrupted` raises it again: Python drops an exception raised inside a garbage-collector
    callback or a ``__del__`` ("Exception ignored in"), and JAX, which the converter's libraries import, runs one
    at every full collection; a Ctrl-C that lands there would leave the conversion running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum: int, frame: object) -> None:
        _interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupted.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came within :func:`sigint_remembered` (and may have been dropped)."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
