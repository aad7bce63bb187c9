"""A model package folder as one deterministic ``package.tar.gz``, and back, safely.

Deterministic: the same folder gives the same bytes (sorted names, zeroed times and
owners, fixed modes, no gzip timestamp), so its sha256 names the content and a re-publish
of an unchanged package is recognised as the same.

Unpacking takes nothing on trust: only regular files and folders, every name relative
and plain (full-matched: no absolute paths, no '..', no links, devices or FIFOs), at most
``MAX_FILES`` entries and ``max_bytes`` declared in all. Members are checked one by one as
the stream is read, so a bomb is stopped at the first entry past a bound, not after it
was inflated; ``tarfile``'s own ``data`` filter runs on top. ``tarfile`` reads a GNU
long-name or pax header's whole declared size (and a sparse member's map) into memory
before any name can be checked, and reads a run of them by recursion, so its header
reader is bounded (:class:`_BoundedTarInfo`).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import tarfile
import weakref
import zlib
from pathlib import Path

from lineside_inspect.errors import DiskUnavailable, PackageError
from lineside_inspect.names import is_package_member

# what a full, failing or unwritable data folder raises, as against what an archive's
# entries can cause (ENOTDIR, EEXIST, ENAMETOOLONG): the folder's fault, not the package's
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                         errno.EPERM})
# of those, what may clear by itself (room made, a quota raised): worth trying again at
# the next pull; a folder the box may not write stays so until someone changes it
PASSING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
MAX_FILES = 64
MAX_UNPACKED_BYTES = 4 << 30  # a package is a graph and its card: 4 GiB is generous
# GNU long names/links and pax headers (read whole by tarfile): a name and a few pax
# records fit in far less
MAX_META_BYTES = 64 * 1024
# a member has a pax header and a long name and link at most; tarfile reads each one in a
# row by recursion, so a long chain would overflow the stack (RecursionError)
MAX_META_RUN = 8
_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
               tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


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


_meta_run: weakref.WeakKeyDictionary[tarfile.TarFile, int] = weakref.WeakKeyDictionary()


class _BoundedTarInfo(tarfile.TarInfo):
    """``tarfile``'s header reader with bounds: it reads a GNU long-name or pax header's
    whole declared size into memory, and a sparse member's map, before any name can be
    checked. Hooked where ``tarfile`` dispatches each header (``_proc_member``), so it sees
    every header exactly as ``tarfile`` will, whatever a pax ``size`` claims."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise PackageError("archive has a sparse member: a package holds plain files")
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            raise PackageError(f"archive has a {self.size}-byte long-name or pax header "
                               f"(at most {MAX_META_BYTES})")
        # the run of meta headers before this one (the one that ends a run resets it)
        run = _meta_run.get(tarfile_, 0) + 1 if self.type in _META_TYPES else 0
        if run > MAX_META_RUN:
            raise PackageError(f"archive has over {MAX_META_RUN} long-name or pax headers in "
                               "a row")
        _meta_run[tarfile_] = run
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]

    # the GNU sparse formats carried in pax headers (0.0, 0.1, 1.0): refused before their
    # maps are parsed
    def _proc_gnusparse_00(self, *_: object) -> None:
        raise PackageError("archive has a sparse member: a package holds plain files")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


def unpack(archive: Path, dest: Path, *, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract ``archive`` into the empty folder ``dest`` under the rules above; raises
    :class:`PackageError` naming the first offending entry (``dest`` may then hold part
    of the package: the caller unpacks into a temporary folder and removes it), and
    :class:`DiskUnavailable` when ``dest`` cannot be written (a full disk)."""
    total = 0
    count = 0
    try:
        with tarfile.open(archive, mode="r:gz", tarinfo=_BoundedTarInfo) as tar:
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
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:  # gzip.BadGzipFile, a file where a folder goes
            raise PackageError(f"package archive could not be unpacked ({type(exc).__name__})"
                               ) from None
        # the folder's (a full disk, a quota, EIO): passing, not the package's fault
        raise DiskUnavailable(f"the package could not be unpacked into the data folder: "
                              f"{exc.strerror}", exc.errno) from None
    except (tarfile.TarError, EOFError, zlib.error, ValueError,
            RecursionError) as exc:  # RecursionError: a backstop, MAX_META_RUN comes first
        raise PackageError(f"package archive could not be unpacked ({type(exc).__name__})") from None
