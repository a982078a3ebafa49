"""Choose a model's threshold on a site's own labelled X-rays: `python tune/calibrate.py --help`."""

from tbray.commands import exits, calibrate

if __name__ == "__main__":
    exits.leave(calibrate.main())
