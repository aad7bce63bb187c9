"""Files written whole: atomically (temp file, fsync, rename, fsync of the folder), or as
a hard link to another (else a copy)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, sync_folder: bool = True,
                 own_tmp: bool = False) -> None:
    """Write ``path`` whole or not at all, its bytes on disk before it gets its name.
    ``sync_folder=False`` leaves the rename's durability to the caller (:func:`fsync_folder`
    once for many files, as the store's writer does per batch). ``own_tmp``: a temp file
    named for this process, where another process may write the same path (the last
    rename wins; no write interleaves with another's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" if own_tmp else f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync_folder:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the names created in (or renamed into) ``folder`` survive a power cut. A file
    system that cannot sync a folder (EINVAL: some network and VM shares) is taken as
    PostgreSQL takes it: the rename stands, and saying it failed would say a file written
    whole was not (a training's new checkpoint was said "not written, the previous kept")."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(dir_fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (no bytes copied; the file lives on while either
    name does), else a copy (another disk, or a file system without links).
    FileNotFoundError when ``src`` is gone."""
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(src, dst)
