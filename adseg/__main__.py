"""Allow ``python -m adseg``."""

from __future__ import annotations

from adseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
