"""A local Ray that tbray starts dies with it, even when tbray itself is killed with SIGKILL.

Ray ties its GCS and raylet to the driver that started them, but the raylet's two agents (dashboard and
runtime-env) outlive it: when their raylet dies they try to report that to the GCS, which died too, and
wait out a 60 s RPC timeout first. Measured here after `kill -9` of a search: both agents lived 60-90 s.
So a watchdog process, in its own session so a signal to the driver's group misses it, keeps a list of
the driver's descendants and kills what is left of them once the driver is gone.

    python -m tbray.reaper PID      stdin: a pipe the driver holds open; EOF means the driver is gone
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

import psutil

REFRESH_S = 1.0  # how often the list of the driver's processes is renewed; Ray starts workers all the time


def watch() -> subprocess.Popen:
    """Start the watchdog for this process; keep the returned handle (its stdin is the lifeline)."""
    return subprocess.Popen([sys.executable, "-m", "tbray.reaper", str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def descendants(pid: int) -> dict[int, float]:
    """pid -> start time of every live descendant of `pid` (the start time tells a reused pid apart)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for child in children:
        try:
            found[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            continue
    return found


def kill_left(known: dict[int, float]) -> int:
    """SIGKILL each process in `known` still running as the same process; returns how many."""
    killed = 0
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started:
                process.kill()
                killed += 1
        except psutil.NoSuchProcess:
            continue
    return killed


def main(driver: int) -> None:
    known: dict[int, float] = {}
    me = os.getpid()
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], REFRESH_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # EOF: the driver has exited, however it ended
            break
        known.update(descendants(driver))
        known = {pid: t for pid, t in known.items() if pid != me and psutil.pid_exists(pid)}
    kill_left(known)


if __name__ == "__main__":
    main(int(sys.argv[1]))
