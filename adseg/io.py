"""File I/O that never leaves a half-written output behind.

Every writer here writes to a temporary name in the destination folder and renames it into
place, so a killed job leaves either the previous file or none, never a truncated one
(``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import SimpleITK as sitk

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc``).

    Elsewhere it is read the only way POSIX offers, by setting it and setting it back (under
    a lock, and to a strict 077 meanwhile: a file another thread makes in that instant is
    private rather than open to all).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success.

    Args:
        path: final destination.
        suffix: suffix of the temporary file. Defaults to the destination's full suffix, so
            writers that choose a format by extension (SimpleITK: ``.nii.gz``) keep working.

    On any exception the temporary file is removed and ``path`` is left untouched. The file
    gets the mode a plain ``open`` would give it (0644 under the usual umask 022), not the
    0600 of a temporary file, so a group's shared results folder stays readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~umask())
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` on success.

    An existing ``path`` is removed only after the new folder is complete. The folder gets
    the mode a plain ``mkdir`` would give it (0755 under umask 022), not 0700.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def format_cell(v: Any) -> str:
    """A TSV cell: empty for None, floats to 6 significant digits (NaN as ``nan``)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_tsv(path: str | os.PathLike, rows: list[dict], columns: tuple[str, ...]) -> None:
    """Write ``rows`` as a TSV with ``columns`` atomically (a missing key is an empty cell)."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(format_cell(r.get(c)) for c in columns) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (NIfTI when ``path`` ends in .nii or .nii.gz)."""
    # imported here: the workflow's parse step reads JSON through this module
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)


def strip_nifti_suffix(name: str) -> str | None:
    """Return ``name`` without its NIfTI suffix, or None if it is not a NIfTI file name."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _json_default(obj: Any) -> Any:
    """Serialise numpy scalars/arrays and paths that ``json`` does not know."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")
