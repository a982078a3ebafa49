"""A Ray that tbray starts on this machine listens on the loopback address only.

Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported; at 0 (its default on macOS and Windows)
it runs the node on 127.0.0.1, and its servers bind to the node's address: nobody on the LAN reaches
the GCS, the raylet, the agents or the metrics ports of a laptop's run. Setting it must happen before
the first `import ray`, so the entry points call this once their options are parsed. A run that joins
a cluster (an address, RAY_ADDRESS) is left alone: its driver must use the node's real address.
"""

from __future__ import annotations

import os

SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def unless_joining(address: str | None) -> None:
    """Keep a Ray started here on loopback, unless `address` (or RAY_ADDRESS) names one to join."""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault(SWITCH, "0")  # a user's own setting (1: reachable) wins
