"""Image geometry in world coordinates (SimpleITK's LPS millimetres).

Orientation codes follow the NIfTI/nibabel convention used by SimpleITK's
``DICOMOrient``: ``"RAS"`` means the first voxel axis points to the patient's Right, the
second to Anterior, the third to Superior (ITK direction ``diag(-1, -1, 1)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """The sampling grid of a 3-D image: what is needed to rebuild it in world space.

    Attributes:
        size: voxels per axis (x, y, z), ITK order.
        spacing: voxel size per axis in mm.
        origin: world position of voxel (0, 0, 0) in mm (LPS).
        direction: 3x3 direction cosines, row-major (ITK).
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        # plain Python numbers, whatever was passed (numpy scalars, lists), so grids compare
        # equal and serialise the same way
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        for name in ("spacing", "origin", "direction"):
            object.__setattr__(
                self, name, tuple(float(v) for v in np.asarray(getattr(self, name)).ravel())
            )

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        """The grid of a 3-D SimpleITK image."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def from_dict(cls, d: dict) -> Grid:
        """Inverse of :meth:`to_dict`."""
        return cls(d["size"], d["spacing"], d["origin"], d["direction"])

    def to_dict(self) -> dict:
        """JSON-ready dict (lists), with the orientation code for people reading it."""
        d = {k: list(v) for k, v in asdict(self).items()}
        d["orientation"] = orientation_code(self.direction)
        return d

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty image on this grid, to use as a resampling reference."""
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image on this grid holding ``array`` ``(z, y, x)`` (numpy order)."""
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(N, 3)`` (x, y, z) to world points ``(N, 3)`` in mm."""
        d = np.asarray(self.direction).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(index) * np.asarray(self.spacing)) @ d.T

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """World points ``(N, 3)`` in mm to continuous voxel indices ``(N, 3)``."""
        d = np.asarray(self.direction).reshape(3, 3)
        return ((np.asarray(points) - np.asarray(self.origin)) @ d) / np.asarray(self.spacing)

    def corners(self) -> np.ndarray:
        """World positions of the 8 outer corners of the voxel cuboid, ``(8, 3)`` mm."""
        lo, hi = -0.5, np.asarray(self.size) - 0.5
        idx = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
        return self.index_to_world(idx)


def orientation_code(direction: tuple[float, ...] | np.ndarray) -> str:
    """Three-letter orientation code (nibabel convention) of the closest axis-aligned frame.

    Oblique directions get the code of the nearest canonical axes, like ``nib.aff2axcodes``.
    """
    flat = tuple(float(v) for v in np.asarray(direction).ravel())
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(flat)


def obliquity_deg(direction: tuple[float, ...] | np.ndarray) -> float:
    """Largest angle in degrees between an image axis and its nearest world axis."""
    d = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    return float(np.degrees(np.arccos(np.clip(d.max(axis=0), -1.0, 1.0))).max())


def reorient(image: sitk.Image, code: str = "RAS") -> sitk.Image:
    """Permute and flip voxel axes so they point along ``code``; world positions are unchanged.

    This is a lossless relabelling of voxels (no interpolation). An oblique image stays oblique,
    with its axes now closest to ``code``.
    """
    return sitk.DICOMOrient(image, code)
