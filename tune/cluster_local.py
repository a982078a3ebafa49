"""cluster/gpu.yaml's autoscaling path on this machine (Ray's fake multi-node provider): `python tune/cluster_local.py --help`."""

from tbray.commands import exits, cluster_local

if __name__ == "__main__":
    exits.leave(cluster_local.main())
