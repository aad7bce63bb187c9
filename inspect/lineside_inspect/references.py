"""Named reference images (golden templates) for reference models.

A line registers the defect-free image of each view once (``PUT /v1/references/NAME``
or a file dropped in the folder) and then names it with every frame, instead of
uploading it each time. Files are kept as sent (``NAME.png|jpg|bmp``), written
atomically; decoded images are cached and re-read when the file changes (its inode,
size, mtime or ctime: a file put in place with its old mtime kept, as ``rsync -a`` or
``cp -p`` do, is still new). Where a name has files in two formats (one dropped beside
another), the newest is the reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lineside_inspect.atomic import write_atomic
from lineside_inspect.errors import (
    ImageError,
    InvalidReferenceName,
    NotFoundError,
    ReferenceImageError,
)
from lineside_inspect.imageio import decode_image, sniff_format
from lineside_inspect.names import NAME_RULE, is_name
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.runtime.reference import contrast

EXTS = ("png", "jpg", "bmp")  # as stored
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # a value ending so is a file, never a name
# decoded goldens kept in memory: a station's few at once, not every one registered (a
# line key naming each of a hundred 4K goldens in turn held 3.6 GB of pixels)
CACHE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Reference:
    name: str | None  # None: sent with the request rather than named
    image: np.ndarray  # BGR uint8
    raw: bytes  # the encoded file, kept so a stored inspection records exactly what was used
    ext: str
    sha256: str

    @classmethod
    def from_bytes(cls, name: str | None, data: bytes, max_pixels: int = MAX_IMAGE_PIXELS,
                   image: np.ndarray | None = None) -> Reference:
        image = decode_image(data, max_pixels) if image is None else image
        return cls(name, image, data, sniff_format(data).replace("jpeg", "jpg"),
                   hashlib.sha256(data).hexdigest())

    @cached_property
    def contrast(self) -> int:
        """The golden's contrast (:func:`~lineside_inspect.runtime.reference.contrast`),
        worked out once: a named reference is the library's cached object, so each
        inspection against it reads this rather than sampling the golden again."""
        return contrast(self.image)

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "sha256": self.sha256}


def _decoded(name: str | None, data: bytes, max_pixels: int) -> Reference:
    """A reference to inspect with, its decode errors saying it is the reference that is
    at fault (the frame's read the same without the prefix)."""
    try:
        return Reference.from_bytes(name, data, max_pixels)
    except ImageError as exc:
        raise exc.prefixed("reference image") from None


def check_name(name: str) -> str:
    if not is_reference_name(name):
        raise InvalidReferenceName(f"reference name {name!r} must be {NAME_RULE}, "
                                   "with no file extension")
    return name


def is_reference_name(value: str) -> bool:
    """A name (full match, see :mod:`lineside_inspect.names`) that is not a file name."""
    return is_name(value) and not value.lower().endswith(SUFFIXES)


class ReferenceLibrary:
    """The reference images in ``folder``, by name (the file stem)."""

    def __init__(self, folder: str | Path, max_pixels: int = MAX_IMAGE_PIXELS,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.folder = Path(folder)
        self.max_pixels = max_pixels
        self.cache_bytes = cache_bytes
        # least recently used first: the ones evicted when the decoded pixels pass cache_bytes
        self._cache: OrderedDict[str, tuple[tuple[int, ...], Reference]] = OrderedDict()
        self._lock = threading.Lock()
        # one put or delete at a time: two puts of a name wrote one temp file together
        # (a golden of both uploads' bytes), and a format change raced the other's unlink
        self._writing = threading.Lock()

    def _file(self, name: str) -> Path | None:
        """The name's newest file (EXTS' order among equals)."""
        found: list[tuple[int, int, Path]] = []
        for rank, ext in enumerate(EXTS):
            path = self.folder / f"{name}.{ext}"
            try:
                st = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):  # ctime too: a file dropped in keeping an old mtime is new
                found.append((-max(st.st_mtime_ns, st.st_ctime_ns), rank, path))
        return min(found)[2] if found else None

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted({p.stem for p in self.folder.iterdir()
                       if p.suffix.lstrip(".") in EXTS and is_reference_name(p.stem)})

    def ignored(self) -> list[str]:
        """The files in the folder no name finds: another extension (``.jpeg``, ``.JPG``,
        ``.tif``) or a stem that is no name. A golden dropped in as ``board.jpeg`` was
        neither listed nor found, and nothing said why (good-only review, session 36).
        Dot files (:func:`write_atomic`'s temp files) are left out."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir()
                      if not p.name.startswith(".") and p.is_file()
                      and not (p.suffix.lstrip(".") in EXTS and is_reference_name(p.stem)))

    def get(self, name: str) -> Reference:
        check_name(name)
        for _ in range(3):  # a put changing the name's format removes the file just found
            path = self._file(name)
            if path is None:
                # (or the look ran between the put's new file and its removing the old one,
                # each stat on the other side: the locked look below settles it; a break
                # here answered 404 for a name that was there all along)
                continue
            try:
                return self._load(name, path)
            except FileNotFoundError:
                continue
        else:
            # puts kept changing its format under each look (CI: "no reference image named
            # 'g' (known: g)"): once more with this process's puts held, the file then stays
            with self._writing:
                path = self._file(name)
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):  # (another process's put)
                        return self._load(name, path)
        raise NotFoundError(f"no reference image named {name!r} (known: "
                            f"{', '.join(self.names()) or 'none'})")

    def lookup(self, value: str) -> Reference:
        """A registered name, or the path of an image file (as camera configs may give)."""
        if is_reference_name(value):
            return self.get(value)
        path = Path(value)
        if not path.is_file():
            # by its name alone: the answer to a trigger must not show the server's folders
            raise NotFoundError(f"reference {path.name or value!r} is neither a registered "
                                "name nor an image file")
        try:
            return self._load(str(path.resolve()), path)
        except FileNotFoundError:  # replaced or removed since is_file
            raise NotFoundError(f"reference file {path.name!r} is gone") from None

    def _load(self, key: str, path: Path) -> Reference:
        # stat and bytes from one open file: a file replaced between the two is never
        # cached under the other's stamp
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None and hit[0] == stamp:
                    self._cache.move_to_end(key)
                    return hit[1]
            data = f.read()
        name = key if is_reference_name(key) else path.stem
        ref = _decoded(name, data, self.max_pixels)
        with self._lock:
            self._cache[key] = (stamp, ref)
            self._cache.move_to_end(key)
            # the one just decoded stays, whatever its size: it is in use
            while len(self._cache) > 1 and self.cached_bytes() > self.cache_bytes:
                self._cache.popitem(last=False)
        return ref

    def cached_bytes(self) -> int:
        """Decoded pixels and encoded files held in memory."""
        return sum(r.image.nbytes + len(r.raw) for _, r in self._cache.values())

    def put(self, name: str, data: bytes,
            check: Callable[[Reference], None] | None = None) -> Reference:
        """Store ``data`` (an encoded image, checked by decoding it, then by ``check``) as
        ``name``, replacing any earlier image of that name."""
        check_name(name)
        ref = Reference.from_bytes(name, data, self.max_pixels)
        if check is not None:
            check(ref)
        with self._writing:
            # own_tmp: another process (a second server on the folder) writes its own temp
            write_atomic(self.folder / f"{name}.{ref.ext}", data, own_tmp=True)
            for other in EXTS:  # one file per name, the new one in place first
                if other != ref.ext:
                    (self.folder / f"{name}.{other}").unlink(missing_ok=True)
            with self._lock:
                self._cache.pop(name, None)
        return ref

    def delete(self, name: str) -> None:
        check_name(name)
        with self._writing:
            path = self._file(name)
            if path is None:
                raise NotFoundError(f"no reference image named {name!r}")
            for ext in EXTS:  # every format of the name: none comes back from under it
                (self.folder / f"{name}.{ext}").unlink(missing_ok=True)
            with self._lock:
                self._cache.pop(name, None)


def resolve_reference(needs_reference: bool, model: str, library: ReferenceLibrary, *,
                      data: bytes | None = None, name: str | None = None,
                      trusted: bool = False, camera: str | None = None,
                      recipe: str | None = None) -> Reference | None:
    """The reference for one inspection: sent with it (``data``) or named (``name``; a
    file path too when ``trusted``, i.e. it comes from the server's own config).

    A reference model must get exactly one; any other model must get none, so a
    caller that believes it talks to the other kind of model hears about it at once.
    With ``camera`` (inspecting under ``recipe``), ``name`` is what that camera's config
    names (trusted, then), and a mismatch is told as a config matter: a trigger carries
    no reference to add or leave out.
    """
    if camera is not None:
        return _camera_reference(needs_reference, model, library, camera, recipe, name)
    if not needs_reference:
        if data is not None or name is not None:
            raise ReferenceImageError(f"model {model} takes no reference image; send the image alone")
        return None
    if data is not None and name is not None:
        raise ReferenceImageError("send a reference image or name one, not both")
    if data is not None:
        return _decoded(None, data, library.max_pixels)
    if name is not None:
        # requests may only name registered references; file paths come from configs
        return library.lookup(name) if trusted else library.get(name)
    known = ", ".join(library.names()) or "none registered"
    raise ReferenceImageError(
        f"model {model} compares each image with a defect-free reference of the same view: "
        f"send a 'reference' file field with the image, or name a registered one with "
        f"reference=NAME (known: {known})")


def _camera_reference(needs_reference: bool, model: str, library: ReferenceLibrary,
                      camera: str, recipe: str | None, configured: str | None) -> Reference | None:
    """The reference camera ``camera`` has configured (``configured``: a name or a file)."""
    whose = f"recipe {recipe}'s model {model}" if recipe else f"model {model}"
    if not needs_reference:
        if configured is not None:
            # a file path stays in the config: the answer names only the file
            shown = configured if is_reference_name(configured) else Path(configured).name
            raise ReferenceImageError(f"camera {camera} has a reference configured ({shown}); "
                                      f"{whose} takes none")
        return None
    if configured is None:
        raise ReferenceImageError(f"camera {camera} has no reference configured; {whose} needs "
                                  "one (cameras[].reference, or cameras[].references for this "
                                  "recipe, in the server config)")
    return library.lookup(configured)
