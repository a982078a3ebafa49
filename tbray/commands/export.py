"""Export a tbray model file to ONNX: uint8 grayscale images [N, S, S] in, P(TB) [N] out.

    python tune/export.py results/<name>/best_model.pt --out model.onnx [--check-images FOLDER]

The graph normalises inside, so a user only resizes each film to S x S (the image size in its metadata).
Metadata: threshold and where it came from, model name, image size, mean/std, tbray version, and the
calibration record of a site-calibrated model (tune/calibrate.py). Before writing, ONNX Runtime's
P(TB) is checked against PyTorch's (CPU) on the check images (default: synthetic ones); a difference
above 1e-4 writes nothing and exits 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tbray.commands import exits
from tbray.errors import ParityError, UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune/export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="best_model.pt from a run folder, or a calibrated copy")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--check-images", type=Path, nargs="+", help="images or folders for the parity check (up to 64)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        from tbray import outputs

        outputs.output_file(args.out, "--out", [args.model])  # a slip in --out is refused before torch loads
        try:
            from tbray.data.preprocess import Input
            from tbray.model import export, modelfile

            saved = modelfile.load_model_file(args.model)
            images = export.images_for_check(args.check_images, Input.of_model(saved)) if args.check_images else None
            export.write(saved, args.out, images)
        except ImportError as exc:
            raise UserError(f"exporting needs {exc.name}: pip install onnx onnxruntime onnxscript") from None
        print(f"tbray: wrote {args.out} (threshold {saved['threshold']:.4f}, image size {saved['image_size']}; "
              f"checked against PyTorch within {export.PARITY_TOLERANCE:g})")
        return 0

    return exits.run(body, failures=(ParityError,))
