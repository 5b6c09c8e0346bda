"""adseg: adversarial segmentation of multi-parametric MRI.

One package per stage of the pipeline; ARCHITECTURE.md maps every module in a line.
"""

from __future__ import annotations

__version__ = "0.1.0"
