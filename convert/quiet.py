"""Standard error hidden at the file-descriptor level, where native code writes too: the converter and the
libraries it loads (litert-torch, torchao, TensorFlow) print hundreds of lines there that a user need not read."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
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
