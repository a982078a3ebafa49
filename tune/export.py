"""Export a tbray model file to ONNX: `python tune/export.py --help`."""

from tbray.commands import exits, export

if __name__ == "__main__":
    exits.leave(export.main())
