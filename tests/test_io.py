"""Atomic writers: the final file or folder has the mode the user's umask gives, not 0600."""

from __future__ import annotations

import os
import stat

import pytest

from adseg.io import atomic_dir, atomic_path, umask, write_json, write_text


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(mask):
    assert umask() == mask
    assert umask() == mask
    now = os.umask(mask)
    assert now == mask


def test_files_and_folders_get_the_umask_mode(mask, tmp_path):
    write_text(tmp_path / "a.txt", "a")
    assert mode(tmp_path / "a.txt") == 0o666 & ~mask
    with atomic_path(tmp_path / "b.nii.gz") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "b.nii.gz") == 0o666 & ~mask
    with atomic_dir(tmp_path / "cohort") as tmp:
        write_json(tmp / "dataset.json", {})
        (tmp / "imagesTr").mkdir()
    assert mode(tmp_path / "cohort") == 0o777 & ~mask
    assert mode(tmp_path / "cohort" / "imagesTr") == 0o777 & ~mask
    assert mode(tmp_path / "cohort" / "dataset.json") == 0o666 & ~mask
    # replacing keeps the umask mode, and leaves no temporary behind
    with atomic_dir(tmp_path / "cohort") as tmp:
        (tmp / "x").write_text("")
    assert mode(tmp_path / "cohort") == 0o777 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.nii.gz", "cohort"]


def test_under_umask_022_files_are_0644_and_folders_0755(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "summary.md", "x")
        with atomic_dir(tmp_path / "qc") as tmp:
            (tmp / "overview.png").write_bytes(b"")
    finally:
        os.umask(old)
    assert mode(tmp_path / "summary.md") == 0o644
    assert mode(tmp_path / "qc") == 0o755


def test_umask_without_proc_is_read_and_restored(mask, monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("adseg.io.open", no_proc, raising=False)
    assert umask() == mask
    assert os.umask(mask) == mask  # set back as it was
