"""Choose a model's threshold on a site's own labelled X-rays: `python tune/calibrate.py --help`."""

import sys

from tbray.commands import calibrate

if __name__ == "__main__":
    sys.exit(calibrate.main())
