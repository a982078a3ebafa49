"""The reaper: what a dead parent left goes, the rest stays. (A search's own Ray after `kill -9` of the search:
tests/test_concurrent.py.)"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
from conftest import wait_for

from tbray.rayops import reaper


def alive(known: dict[int, float]) -> dict[int, str]:
    """pid -> name of the processes in `known` still running as themselves."""
    left = {}
    for pid, started in known.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                left[pid] = " ".join(process.cmdline())[:160] or process.name()
        except psutil.NoSuchProcess:
            continue
    return left


def test_the_reaper_kills_what_a_dead_parent_left_and_spares_the_rest(tmp_path):
    # A parent with a grandchild; the parent is killed and the grandchild must follow. A bystander lives.
    script = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(120)']); " \
             "from tbray.rayops import reaper; w = reaper.watch(1); time.sleep(120)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        family = wait_for(lambda: {p: t for p, t in reaper.descendants(parent.pid).items()
                                   if "tbray.rayops.reaper" not in " ".join(psutil.Process(p).cmdline())} or None,
                          30, "the parent's child")
        time.sleep(2 * reaper.REFRESH_S + 1)  # the watchdog has listed the child by now
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while alive(family) and time.time() < deadline:
            time.sleep(0.2)
        assert alive(family) == {}
        assert bystander.poll() is None
    finally:
        for p in (parent, bystander):
            p.kill()
