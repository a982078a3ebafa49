"""cluster/gpu.yaml's autoscaling path on this machine (Ray's fake multi-node provider): `python tune/cluster_local.py --help`."""

import sys

from tbray.commands import cluster_local

if __name__ == "__main__":
    sys.exit(cluster_local.main())
