"""A local Ray that tbray starts dies with it, even when tbray itself is killed with SIGKILL.

Ray ties its GCS and raylet to the driver that started them, but the raylet's two agents (dashboard and
runtime-env) outlive it: when their raylet dies they try to report that to the GCS, which died too, and
wait out a 60 s RPC timeout first. Measured here after `kill -9` of a search: both agents lived 60-90 s.
So a watchdog process, in its own session so a signal to the driver's group misses it, keeps a list of
the driver's descendants and kills what is left of them once the driver is gone, together with every
process that names this Ray's GCS on its command line or in its environment: a worker the raylet
forked a moment before the kill is not on the list yet, and it too waits on the dead GCS.

    python -m tbray.rayops.reaper PID PORT   stdin: a pipe the driver holds open; EOF means the driver is gone
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil

REFRESH_S = 1.0  # how often the list of the driver's processes is renewed; Ray starts workers all the time
SWEEPS = 4  # final looks for this Ray's processes, half a refresh apart, after the known ones are killed
READY_TIMEOUT_S = 30.0  # how long the driver waits for the watchdog's first list before going on without it


def watch(gcs_port: int) -> subprocess.Popen:
    """Start the watchdog for this process; keep the returned handle (its stdin is the lifeline).

    Returns once the watchdog has listed this process's children, so a search killed a moment after its
    Ray started still takes that Ray along (the test suite once killed one before its watchdog looked).
    """
    watchdog = subprocess.Popen([sys.executable, "-m", "tbray.rayops.reaper", str(os.getpid()), str(gcs_port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    ready, _, _ = select.select([watchdog.stdout], [], [], READY_TIMEOUT_S)
    if ready:
        watchdog.stdout.read(1)
    watchdog.stdout.close()
    return watchdog


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


def of_ray(gcs_port: int) -> dict[int, float]:
    """pid -> start time of every process of the Ray whose GCS listens on `gcs_port`: its command line
    names that GCS (`--gcs-address=HOST:PORT`), or, for a worker that has renamed itself `ray::IDLE`,
    its environment does (the RAY_ADDRESS that cluster.start_local sets for every Ray process)."""
    address, mark = f"127.0.0.1:{gcs_port}", f":{gcs_port}"
    found = {}
    for process in psutil.process_iter(["cmdline", "create_time"]):
        try:
            named = any(a.startswith("--gcs-address=") and a.endswith(mark) for a in process.info["cmdline"] or ())
            if named or process.environ().get("RAY_ADDRESS") == address:
                found[process.pid] = process.info["create_time"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
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


def main(driver: int, gcs_port: int) -> None:
    me = os.getpid()
    known = {pid: t for pid, t in descendants(driver).items() if pid != me}
    os.write(sys.stdout.fileno(), b"1")  # listed: the driver may go on
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], REFRESH_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # EOF: the driver has exited, however it ended
            break
        known.update(descendants(driver))
        known = {pid: t for pid, t in known.items() if pid != me and psutil.pid_exists(pid)}
    kill_left(known)
    # The raylet may fork one more worker in the moment before it dies; look again until none is left.
    for _ in range(SWEEPS):
        time.sleep(REFRESH_S / 2)
        kill_left({pid: t for pid, t in of_ray(gcs_port).items() if pid != me})  # its RAY_ADDRESS is inherited


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
