"""Wall time of each stage of a conversion: logged as each stage ends (seen with -v), summed up in one line
at the end of the run (what benchmarks/convert_speed.py reads), and kept in the result."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

logger = logging.getLogger(__name__)


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
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
