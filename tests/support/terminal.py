"""Child processes started as from a terminal, for tests that press Ctrl-C."""

from __future__ import annotations

import signal


def as_from_a_terminal() -> None:
    """A ``preexec_fn``: SIGINT handled by default and not blocked, whatever the test runner did to its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
