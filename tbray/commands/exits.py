"""What every tbray command shares: errors and signals become one line and an exit code.

    0    done
    1    the work failed, not the user (every trial failed; an ONNX graph that disagrees with PyTorch)
    2    a user error: one line, "tbray: error: ...", naming the file or option and the reason
    130  Ctrl-C
    143  SIGTERM (a scheduler, systemd, kill): stops as Ctrl-C does

No traceback reaches the user for any of these. A command that can be continued passes `resume`, which
gives the command line to print after an interruption.
"""

from __future__ import annotations

import gc
import sys
from typing import Callable, NoReturn

from tbray.errors import SearchFailed, UserError
from tbray.rayops import interrupt


def run(body: Callable[[], int], failures: tuple[type[Exception], ...] = (),
        resume: Callable[[], str | None] = lambda: None) -> int:
    """Run a command's body; `failures` are its own exceptions that mean exit code 1."""
    interrupt.install()  # SIGTERM stops like Ctrl-C; a search installs it again once Ray has started
    try:
        return body()
    except UserError as exc:
        return _say(f"error: {exc}", 2)
    except (SearchFailed, *failures) as exc:
        return _say(f"error: {exc}", 1)
    except KeyboardInterrupt:
        hint = resume()
        return _say(interrupt.reason() + (f"; continue with: {hint}" if hint else ""), interrupt.exit_code())
    finally:
        disconnect()


def leave(code: int) -> NoReturn:
    """End the program with `code`, once its command has returned (the `tune/*.py` scripts call this).

    torch, Ray, ONNX and MLflow leave about a million objects behind, and the interpreter's last full
    garbage collection walked them all for 3-4 s after a search had finished (measured). They are frozen
    out of it instead: the process is ending, and its memory goes back to the system anyway.
    """
    gc.freeze()
    sys.exit(code)


def _say(line: str, code: int) -> int:
    print(f"tbray: {line}", file=sys.stderr)
    return code


def disconnect() -> None:
    """Leave Ray cleanly if the command used it: a local Ray stops, a cluster keeps running."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
