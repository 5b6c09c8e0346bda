"""Open a Snakemake report in a real headless browser (Debian's chromium) and check what a
reader sees: the page renders, the summary table is in its DOM (not only in the embedded
data), and a screenshot of it is not blank.

Usage: python .ci/check_report.py REPORT.html TEXT [TEXT ...]
  every TEXT must appear in the rendered page outside <script> elements.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSER = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
WAIT = "--virtual-time-budget=15000"  # let the report's scripts build the page


def main(report: Path, texts: list[str]) -> None:
    url = report.resolve().as_uri()
    dom = subprocess.run(
        [*BROWSER, WAIT, "--dump-dom", url], capture_output=True, text=True, timeout=300
    ).stdout
    shown = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)
    assert "<table" in shown, "no table in the rendered page"
    missing = [t for t in texts if t not in shown]
    assert not missing, f"not in the rendered page: {missing}"
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "report.png"
        subprocess.run(
            [*BROWSER, WAIT, "--window-size=1280,1000", f"--screenshot={shot}", url],
            capture_output=True,
            timeout=300,
            check=True,
        )
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # a blank page is one colour; the report's page has text, tables and a menu
    dark = float((pixels < 128).mean())
    assert pixels.std() > 10 and 0.001 < dark < 0.9, (pixels.std(), dark)
    print(
        f"report: {report} renders in chromium; {shown.count('<table')} tables in its DOM, "
        f"{', '.join(texts)} among them; screenshot {pixels.shape[1]}x{pixels.shape[0]}, "
        f"{dark:.1%} dark pixels"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
