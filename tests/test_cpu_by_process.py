"""The suite's CPU accounting (tbray.bench.cpu_by_process), run as a user runs it, on processes whose CPU is known."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tbray.bench.cpu_by_process import WAITING, kind

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"


def test_kinds_name_rays_processes_scripts_and_programs():
    venv = "/x/.venv/lib/python3.11/site-packages"
    assert kind(["ray::TrainController.run"]) == kind(["ray::TrainController"]) == "ray::TrainController"
    assert kind(["ray-dashboard-NodeHead-0", "(/x/python", "-B", "-c", "...)"]) == "ray-dashboard-NodeHead"
    worker = f"{venv}/ray/_private/workers/default_worker.py"
    assert kind(["/x/.venv/bin/python", worker, "--node-ip-address=1"]) == WAITING
    assert kind(["/x/.venv/bin/python", "-u", "/repo/tune/search.py", "--data", "d"]) == "tune/search.py"
    assert kind(["/x/.venv/bin/python", "-m", "pytest", "-q"]) == "pytest"
    assert kind(["/x/.venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--node"]) == "raylet"
    assert kind(["/usr/lib/chromium/chromium", "--type=renderer"]) == "chromium"
    assert kind([]) == "?"


def test_an_orphan_the_command_leaves_is_counted_with_its_cpu(tmp_path):
    """A process whose parent ends before it does (as `ray start` leaves its servers) would move to PID 1
    and be lost to a count of the command's descendants; the measuring process adopts it instead."""
    (tmp_path / "orphan" / "busy.py").parent.mkdir()
    (tmp_path / "orphan" / "busy.py").write_text(BUSY)
    command = textwrap.dedent(f"""
        import os, subprocess, sys, time
        if os.fork() == 0:  # a child that starts the busy script and leaves it running without a parent
            subprocess.Popen([sys.executable, {str(tmp_path / "orphan" / "busy.py")!r}])
            os._exit(0)
        os.wait()
        time.sleep(2.5)  # the orphan's second of CPU ends in here
        """)
    done = subprocess.run([sys.executable, "-m", "tbray.bench.cpu_by_process", "--interval", "0.1", "--",
                           sys.executable, "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("kind"))  # the table's last header line
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:]}
    assert rows["orphan/busy.py"][0] == "1" and float(rows["orphan/busy.py"][1]) >= 0.9, done.stdout
    assert any(line.startswith("exit 0, ") for line in lines), done.stdout


def test_the_commands_exit_code_is_its_own():
    done = subprocess.run([sys.executable, "-m", "tbray.bench.cpu_by_process", "--", sys.executable, "-c",
                           "raise SystemExit(3)"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "\nexit 3, " in done.stdout, done.stdout + done.stderr
