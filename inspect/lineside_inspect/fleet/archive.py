"""A model package folder as one deterministic ``package.tar.gz``, and back, safely.

Deterministic: the same folder gives the same bytes (sorted names, zeroed times and
owners, fixed modes, no gzip timestamp), so its sha256 names the content and a re-publish
of an unchanged package is recognised as the same.

Unpacking takes nothing on trust: only regular files and folders, every name relative
and plain (full-matched: no absolute paths, no '..', no links, devices or FIFOs), at most
``MAX_FILES`` entries and ``max_bytes`` declared in all. Members are checked one by one as
the stream is read, so a bomb is stopped at the first entry past a bound, not after it
was inflated; ``tarfile``'s own ``data`` filter runs on top. Before that, the raw headers
are walked once (:func:`_check_headers`): ``tarfile`` reads a GNU long-name or pax header's
whole declared size into memory before any name can be checked, so those are bounded first.
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
# GNU long names/links and pax headers (read whole by tarfile): a name and a few pax
# records fit in far less
MAX_META_BYTES = 64 * 1024
_META_TYPES = frozenset(b"LKxgX")
_BLOCK = 512


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


def _header_size(block: bytes) -> int:
    """A tar header's size field: octal digits, or base-256 when its first byte has the
    high bit (GNU), as tarfile reads it."""
    field = block[124:136]
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise PackageError("archive has a corrupt header (its size is not a number)") from None


def _check_headers(archive: Path) -> None:
    """Walk the raw headers of the decompressed stream (never holding more than a block)
    and refuse a metadata header (long name or link, pax) over ``MAX_META_BYTES``."""
    entries = 0
    with gzip.open(archive, "rb") as raw:
        while True:
            block = raw.read(_BLOCK)
            if len(block) < _BLOCK or block == bytes(_BLOCK):
                return  # the end (tarfile itself judges a truncated archive)
            entries += 1
            if entries > 4 * MAX_FILES:  # each file has at most a few metadata headers
                raise PackageError(f"archive has over {MAX_FILES} entries")
            size = _header_size(block)
            if block[156] in _META_TYPES and size > MAX_META_BYTES:
                raise PackageError(f"archive has a {size}-byte long-name or pax header "
                                   f"(at most {MAX_META_BYTES})")
            skip = -(-size // _BLOCK) * _BLOCK
            while skip > 0:  # the member's data, read and dropped in bounded pieces
                chunk = raw.read(min(skip, 1 << 20))
                if not chunk:
                    return
                skip -= len(chunk)


def unpack(archive: Path, dest: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract ``archive`` into the empty folder ``dest`` under the rules above; raises
    :class:`PackageError` naming the first offending entry (``dest`` may then hold part
    of the package: the caller unpacks into a temporary folder and removes it)."""
    total = 0
    count = 0
    try:
        _check_headers(archive)
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
