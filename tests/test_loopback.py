"""A laptop's search keeps its Ray to itself: every socket its local Ray listens on is a loopback address,
and its dashboard answers only to the token.

The one socket beyond loopback is torch's, not Ray's: the rendezvous store of a trial's process group.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from conftest import TINY, wait_for

from tbray.rayops import reaper


def listening(pids) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket held by one of `pids`."""
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
            except psutil.NoSuchProcess:
                continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def dashboard_url(proc, seen: list[str]) -> str:
    """The dashboard address tbray prints, read from the search's output (kept in `seen`) as it comes."""
    for line in proc.stdout:
        seen.append(line)
        if found := re.search(r"Ray dashboard at (http://[^;\s]+)", line):
            return found.group(1)
    raise AssertionError(f"the search ended without naming its dashboard:\n{''.join(seen)[-3000:]}")


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_no_socket_of_a_local_search_listens_beyond_loopback(start_cli, tiny_data, tmp_path, monkeypatch):
    # As in a fresh shell: token authentication must be on because tbray asks for it, not by Ray's
    # default (which prints a warning); a Ray started earlier in this test session sets the variable.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    proc = start_cli("--data", tiny_data, "--results", tmp_path, "--name", "lan", *TINY, "--epochs", "20",
                     "--num-samples", "1", "--num-cpus", "1")
    try:
        seen: list[str] = []
        url = dashboard_url(proc, seen)
        assert not [line for line in seen if "Token authentication is" in line], seen
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        assert status(f"{url}/api/version") == 401 and status(f"{url}/api/version", token) == 200
        # A trial has reported, so the GCS, raylet, dashboard, its agents and the Train workers all listen.
        wait_for(lambda: list((tmp_path / "lan" / "train").glob("*/checkpoint_*")), 400, "a first epoch", proc)
        sockets = listening({proc.pid, *reaper.descendants(proc.pid)})
        names = {name for _, _, name in sockets}
        assert "gcs_server" in names and "raylet" in names, sockets  # the servers a LAN could reach
        # One exception, torch's: rank 0 of a trial's worker group holds the process group's rendezvous
        # store (TCPStore), which torch binds to every interface with no setting to change it.
        beyond = [s for s in sockets if not is_loopback(s[0])]
        assert len(beyond) <= 1 and all(name == "ray::RayTrainWorker" for _, _, name in beyond), sockets
        assert any(name == "ray::RayTrainWorker" and is_loopback(ip) for ip, _, name in sockets), sockets
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 130, output[-3000:]
        assert "--resume --name lan" in output  # Ctrl-C in training: the resume command, printed
        assert "Token authentication is" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
