"""Export a tbray model file to ONNX: `python tune/export.py --help`."""

import sys

from tbray.commands import export

if __name__ == "__main__":
    sys.exit(export.main())
