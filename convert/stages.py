"""Wall time of each stage of a conversion: logged as each stage ends (seen with -v), summed up in one line
at the end of the run (what benchmarks/convert_speed.py reads), and kept in the result; on a terminal, a stage
with no progress bar of its own can show its elapsed time."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Iterator

from tqdm import tqdm

from .quiet import raise_if_interrupted

logger = logging.getLogger(__name__)


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, ticker: bool = False) -> Iterator[None]:
        """Time the block as stage ``name``; ``ticker``: show its elapsed time on the terminal meanwhile. A Ctrl-C
        that Python dropped during the previous stage stops the run here (``quiet.sigint_remembered``)."""
        raise_if_interrupted()
        start = time.perf_counter()
        try:
            with elapsed_time(name) if ticker else contextlib.nullcontext():
                yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            logger.debug("Stage %s took %.1f s", name, elapsed)

    def add(self, seconds: dict[str, float], prefix: str = "") -> None:
        """Stages timed elsewhere (another process), named ``prefix + name``."""
        for name, elapsed in seconds.items():
            self.seconds[prefix + name] = self.seconds.get(prefix + name, 0.0) + elapsed

    def summary(self) -> str:
        """``Stage times: 107.0 s in all; load 0.5 s, ...``: the wall time since the clock started, then each stage
        in the order they ran (stages that ran side by side add up to more than the wall time)."""
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())
        return f"Stage times: {time.perf_counter() - self.started:.1f} s in all; {parts}"


@contextlib.contextmanager
def elapsed_time(name: str, interval: float = 1.0) -> Iterator[None]:
    """``name: 00:12`` on the terminal, refreshed every ``interval`` seconds while the block runs (nothing when
    stderr is not a terminal). Written to the terminal stderr is now, even where the block redirects the stderr
    file descriptor (the converter does, to hide its native chatter)."""
    if not sys.stderr.isatty():
        yield
        return
    sys.stderr.flush()
    with os.fdopen(os.dup(sys.stderr.fileno()), "w") as terminal:
        bar = tqdm(desc=name, bar_format="{desc}: {elapsed}", file=terminal, leave=False)
        done = threading.Event()

        def tick() -> None:
            while not done.wait(interval):
                bar.refresh()

        ticker = threading.Thread(target=tick, name=f"{name} ticker", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            bar.close()
