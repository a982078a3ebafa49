"""Stopping a search on request: SIGTERM (kill, a scheduler, systemd) stops it as Ctrl-C does.

Ctrl-C lets Tune save its state and the trials stop, so trials.csv is written and the search can be
resumed. SIGTERM used to abort instead: ray.init installs a handler that exits at once, and Ray's core
then installs its own crash handler over it (`*** SIGTERM received ***`, `Aborted`, exit 134). We hand
SIGTERM to whatever handles SIGINT at that moment, and remember it so the exit code says which signal.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # 143
_received: set[int] = set()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Do what Ctrl-C would do now: Tune's graceful stop during the search, else a KeyboardInterrupt."""
    _received.add(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or left to the OS: stop the way the CLI stops on Ctrl-C all the same
        raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM to the Ctrl-C path; call again after ray.init, which replaces the handler."""
    if threading.current_thread() is threading.main_thread():  # signal.signal works only there
        signal.signal(signal.SIGTERM, _on_sigterm)


def after_tune() -> None:
    """Put Python's own Ctrl-C handler back once Tune's fit has returned. Tune leaves its handler installed,
    and it only sets an event nobody reads any more: Ctrl-C and SIGTERM during the final evaluation used to
    be ignored (the search went on and exited 0). After this, both raise KeyboardInterrupt there, so the
    command stops with 130 or 143 and the resume hint, every file it wrote whole (write then rename)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def requested() -> bool:
    """Whether SIGTERM asked this search to stop: Tune then ends every running trial as if it had finished,
    so the trials alone can't tell a stopped search from a done one."""
    return signal.SIGTERM in _received


def exit_code() -> int:
    """143 if the stop came from SIGTERM, 130 for Ctrl-C: what a shell shows for each signal."""
    return TERMINATED if signal.SIGTERM in _received else INTERRUPTED


def reason() -> str:
    """How the search was stopped, for the one line that tells the user how to continue."""
    return "stopped by SIGTERM" if signal.SIGTERM in _received else "interrupted"
