"""Progress while data are checked and cached: a bar on a terminal only, a closing line always."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from conftest import REPO

SCRIPT = """
import sys
from pathlib import Path
from tbray.data import cache, dataset
found = dataset.discover(Path(sys.argv[1]), min_side=32)
split = found.files.assign(split="train")
cache.build(found.root, split, [32], Path(sys.argv[2]))
"""


def _run(tiny_data, cache_dir, terminal: bool) -> tuple[str, str]:
    """The two steps in a fresh process, stderr on a pseudo-terminal or a pipe; (stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", SCRIPT, str(tiny_data), str(cache_dir)]
    if not terminal:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, text=True, env=env)
    os.close(follower)
    err = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        err += chunk
    out = proc.communicate(timeout=120)[0]
    os.close(leader)
    return out, err.decode(errors="replace")


def test_bar_on_a_terminal_only_and_a_closing_line_with_count_and_time(tiny_data, tmp_path):
    out, err = _run(tiny_data, tmp_path / "piped", terminal=False)
    assert "it/s" not in err and "file/s" not in err and "%|" not in err
    lines = out.splitlines()
    assert any(line.startswith("tbray: checked and hashed 72 file(s) under ") and line.endswith(" s)") for line in lines)
    assert any(line.startswith("tbray: decoded for the cache 72 file(s) at 32 px (") for line in lines)

    out, err = _run(tiny_data, tmp_path / "tty", terminal=True)
    assert "tbray: checked and hashed:" in err and "tbray: decoded for the cache:" in err and "/72 [" in err
    assert "tbray: decoded for the cache 72 file(s) at 32 px" in out
