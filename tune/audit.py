"""Audit a finished search for shortcuts: `python tune/audit.py --help`."""

from tbray.commands import exits, audit

if __name__ == "__main__":
    exits.leave(audit.main())
