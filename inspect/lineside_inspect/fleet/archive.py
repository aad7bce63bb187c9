"""A model package folder as one deterministic ``package.tar.gz``, and back, safely.

Deterministic: the same folder gives the same bytes (sorted names, zeroed times and
owners, fixed modes, no gzip timestamp), so its sha256 names the content and a re-publish
of an unchanged package is recognised as the same.

Unpacking takes nothing on trust: only regular files and folders, every name relative
and plain (full-matched: no absolute paths, no '..', no links, devices or FIFOs), at most
``MAX_FILES`` entries and ``max_bytes`` declared in all. Members are checked one by one as
the stream is read, so a bomb is stopped at the first entry past a bound, not after it
was inflated; ``tarfile``'s own ``data`` filter runs on top.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from pathlib import Path

from lineside_inspect.errors import PackageError
from lineside_inspect.names import is_package_member

MAX_FILES = 64
MAX_UNPACKED_BYTES = 4 << 30  # a package is a graph and its card: 4 GiB is generous


def _check_name(name: str) -> str:
    if not is_package_member(name):
        raise PackageError(f"archive entry {name[:80]!r} is not a plain relative name")
    return name


def pack(folder: Path) -> bytes:
    """``folder``'s regular files as a deterministic tar.gz (links and specials refused)."""
    if not folder.is_dir():
        raise PackageError(f"{folder}: model package folder not found")
    files: list[tuple[str, Path]] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise PackageError(f"{folder}: {rel} is a link or special file: not packaged")
        if p.is_file():
            files.append((_check_name(rel), p))
    if len(files) > MAX_FILES:
        raise PackageError(f"{folder}: {len(files)} files, a package holds at most {MAX_FILES}")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, p in files:
            info = tarfile.TarInfo(rel)
            info.size = p.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unpack(archive: Path, dest: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract ``archive`` into the empty folder ``dest`` under the rules above; raises
    :class:`PackageError` naming the first offending entry (``dest`` may then hold part
    of the package: the caller unpacks into a temporary folder and removes it)."""
    total = 0
    count = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:  # streamed: each entry is judged before its data is read
                name = _check_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise PackageError(f"archive entry {name!r} is a link or special file")
                count += 1
                total += member.size
                if count > MAX_FILES:
                    raise PackageError(f"archive has over {MAX_FILES} entries")
                if total > max_bytes:
                    raise PackageError(f"archive unpacks to over {max_bytes} bytes")
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise PackageError(f"package archive could not be unpacked ({type(exc).__name__})") from None
