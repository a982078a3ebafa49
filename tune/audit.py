"""Audit a finished search for shortcuts: `python tune/audit.py --help`."""

import sys

from tbray.commands import audit

if __name__ == "__main__":
    sys.exit(audit.main())
