"""``python -m ace_ray``: the same entry point as the ``ace-ray`` script (handy under ``ray job submit``)."""

from ace_ray.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
