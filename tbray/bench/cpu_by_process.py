"""Where a command's CPU time goes, by kind of process: `python -m tbray.bench.cpu_by_process -- make test`.

Made for the test suite's time (issue 21): on 2 cores it is bound by CPU, and most of that CPU is
process start-up (Ray's actors, the command-line runs), which pytest's `--durations` can't show.
The command runs as a child of this one, which becomes its subreaper (Linux `prctl`): a daemon that
`ray start` leaves behind stays under it instead of moving to PID 1, so every process the command starts
is counted. Each is sampled from /proc every `--interval` seconds until it ends; CPU a process spends
after its last sample, and processes that live less than one interval, are missed.
Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import pandas as pd

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
TICKS = os.sysconf("SC_CLK_TCK")
WAITING = "ray worker (before its task)"  # a Ray worker takes its actor's name (ray::ClassName) once given one


@dataclass
class Seen:
    kind: str  # what kind(cmdline) calls it, from the last sample that could read its command line
    cpu_s: float  # user + system seconds at the last sample


def kind(cmdline: list[str]) -> str:
    """A process's kind: Ray's actor or server, the script or module Python runs, or the program."""
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):  # Ray's title for an actor: ray::ClassName, or ray::ClassName.method
        return first.split()[0].split(".")[0]
    if first.startswith("ray-dashboard-"):  # a dashboard module's process: ray-dashboard-NodeHead-0 (...)
        return re.sub(r"-\d+$", "", first.split()[0])
    program = os.path.basename(first)
    if not program.startswith("python"):
        return "chromium" if "chrom" in program else program
    args = cmdline[1:]
    while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
        args = args[1:]  # interpreter flags such as -B, -u
    if not args:
        return "python"
    if args[0] == "-m":
        return args[1] if len(args) > 1 else "python -m"
    if args[0] == "-c":
        return "python -c"
    script = args[0]
    if "site-packages/" in script:  # an installed program: ray's workers, its dashboard, a console script
        return {"default_worker.py": WAITING}.get(os.path.basename(script), os.path.basename(script))
    parts = script.split("/")
    return "/".join(parts[-2:])  # tune/search.py, bin/ray


def _read(pid: int) -> tuple[str, float, str] | None:
    """(start time, CPU seconds, short name) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, tail = f.read().rsplit(")", 1)
    except OSError:
        return None
    fields = tail.split()  # after the name: state, ppid, ...; utime and stime are the 12th and 13th
    return fields[19], (int(fields[11]) + int(fields[12])) / TICKS, head.split("(", 1)[1]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    return words[0].split() + words[1:] if len(words) == 1 else words  # a title set as one string


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def measure(command: list[str], interval: float = 0.2) -> tuple[int, float, dict[tuple[int, str], Seen]]:
    """Run `command`; return its exit code, its wall seconds and every descendant process seen."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    seen: dict[tuple[int, str], Seen] = {}
    started = time.monotonic()
    proc = subprocess.Popen(command)
    while True:
        for pid in _descendants(os.getpid()):  # an ended command's last figures too: it waits, unreaped
            if (read := _read(pid)) is not None:
                key = (pid, read[0])  # a reused pid starts at another time
                label = kind(_cmdline(pid))  # read each time: Ray's processes rename themselves once started
                if label == "?":  # it has ended (its command line reads empty): keep its name, or take the kernel's
                    label = seen[key].kind if key in seen else read[2]
                seen[key] = Seen(label, read[1])
        # Reap what ended: the command, for its exit code, and the orphans it left, ours now as PID 1's would be.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode is not None:
            return proc.returncode, time.monotonic() - started, seen
        time.sleep(interval)


def table(seen: dict[tuple[int, str], Seen]) -> pd.DataFrame:
    """CPU seconds and processes by kind, most CPU first, with each kind's share of the total."""
    frame = pd.DataFrame([{"kind": s.kind, "cpu_s": s.cpu_s} for s in seen.values()])
    out = frame.groupby("kind")["cpu_s"].agg(processes="size", cpu_s="sum").sort_values("cpu_s", ascending=False)
    out["share"] = out["cpu_s"] / max(out["cpu_s"].sum(), 1e-9)  # 0, not NaN, for a command that used none
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tbray.bench.cpu_by_process", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples (default 0.2)")
    p.add_argument("--top", type=int, default=30, help="kinds to print (default 30)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to measure after --, e.g. -- make test")
    try:
        code, wall, seen = measure(command, args.interval)
    except KeyboardInterrupt:  # Ctrl-C reached the command too: it stops, and nothing is left to count
        return 130
    result = table(seen)
    cpu = result["cpu_s"].sum()
    print(f"\n{shlex.join(command)}\nexit {code}, {wall:.1f} s wall, {cpu:.1f} s CPU in {len(seen)} processes "
          f"({cpu / wall / os.cpu_count():.0%} of {os.cpu_count()} cores); the sampling took "
          f"{sum(os.times()[:2]):.1f} s CPU more")
    print(result.head(args.top).to_string(formatters={"cpu_s": "{:.1f}".format, "share": "{:.1%}".format}))
    return code


if __name__ == "__main__":
    sys.exit(main())
