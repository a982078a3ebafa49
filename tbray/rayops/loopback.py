"""A Ray that tbray starts on this machine listens on the loopback address only, and asks for a token.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; at 0 (its default on macOS and Windows)
it runs the node on 127.0.0.1, and its servers bind to the node's address: nobody on the LAN reaches
the GCS, the raylet, the agents or the metrics ports of a laptop's run. Setting it must happen before
the first `import ray`, so the entry points call this once their options are parsed. A run that joins
a cluster (an address, RAY_ADDRESS) is left alone: its driver must use the node's real address.

Token authentication the same way: Ray 2.60 turns it on for a new local cluster when RAY_AUTH_MODE is
unset, and then warns on the console that it did. tbray asks for it (RAY_AUTH_MODE=token, also read
at import), so it is on by choice and Ray has nothing to warn about.
"""

from __future__ import annotations

import os

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE = "RAY_AUTH_MODE"


def unless_joining(address: str | None) -> None:
    """Keep a Ray started here on loopback and on a token, unless `address` (or RAY_ADDRESS) names one to join."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault(SWITCH, "0")  # a user's own setting (1: reachable) wins
        os.environ.setdefault(AUTH_MODE, "token")  # likewise (disabled: no token asked)
