"""`python -m odk`: the same command as the `odk` console script."""

from odk.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
