"""What the converter's libraries (litert-torch, torchao, TensorFlow) do to a terminal, contained: the hundreds of
lines they print on standard error, hidden at the file-descriptor level where native code writes too; and a
Ctrl-C while they load, which their imports do not survive cleanly (a KeyboardInterrupt in the middle of
``import litert_torch`` ends in a RecursionError, or is swallowed and the command runs on), held back until the
import is done."""

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
