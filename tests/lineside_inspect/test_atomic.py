"""Files written whole (``lineside_inspect.atomic``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from lineside_inspect.atomic import fsync_folder, write_atomic


def test_a_folder_its_file_system_cannot_sync_keeps_the_file_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A share whose file system refuses to fsync a folder (EINVAL: vboxsf, some FUSE and
    network mounts) made write_atomic raise after the rename: a training said its new
    checkpoint was not written and the previous kept, with the new one in place (review,
    session 54). Only the folder's fsync is refused here, as such a file system does."""
    real = os.fsync

    def refusing_folders(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", refusing_folders)
    path = tmp_path / "last.pt"
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_folder_sync_failing_otherwise_is_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error is not a file system's lack of the call: the caller hears it."""
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError) as caught:
        fsync_folder(tmp_path)
    assert caught.value.errno == errno.EIO
