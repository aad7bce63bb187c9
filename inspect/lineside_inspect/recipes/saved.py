"""Recipes put over the API, kept in the data folder so that a restart keeps them.

``PUT /v1/recipes/NAME`` answered 200 and the recipe was gone at the next restart: the
line went back to the configuration's thresholds without anyone asking. Each put recipe
is now written (atomically) to ``<data_dir>/recipes/NAME.json`` with who put it, when, and
its place in the load order; the server loads these after its own recipes (the
configuration's, the cards', a fleet box's pulled models'), so a put recipe replaces the
server's own of its name until ``DELETE /v1/recipes/NAME`` drops it.

Beside them, ``<data_dir>/recipes/.versions/NAME.json`` keeps each version of ``NAME`` that
judged here since session 55 (put over the API, or replaced by a put) with the digest of
its rules: a version means one set of rules for good, after a DELETE too (a stored
verdict's "recipe X version 3" says which rules judged it). Since session 56 it keeps each
version's regions too (``regions``: version -> roi and ignore, written as a version starts
judging), so ``data pull`` paints out what a version no longer judging never judged; a
file of an earlier release has none (those versions' frames are pulled whole, said), and
an earlier release reads the file still (it reads ``versions`` only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from lineside_inspect.atomic import fsync_folder, write_atomic
from lineside_inspect.errors import ConfigError, describe_validation
from lineside_inspect.names import is_name
from lineside_inspect.recipes.schema import (
    JudgedRegions,
    Recipe,
    RecipeVersion,
    rules_digest,
    version_key,
)

log = logging.getLogger("lineside")

SAVED_FORMAT = 1
VERSIONS_FORMAT = 1
# a versions file past this is not one Lineside wrote (an entry is about 140 bytes)
MAX_VERSIONS_BYTES = 4 << 20
_VERSION = TypeAdapter(RecipeVersion)
_REGIONS = TypeAdapter(JudgedRegions)
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SavedRecipe:
    recipe: Recipe
    put_by: str
    put_at: str


class SavedRecipes:
    """The folder of recipes put over the API: ``NAME.json`` each. ``NAME`` is a recipe
    name (full-matched by :data:`~lineside_inspect.names.NAME_RE` before it is a path)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        # held by the routes while the registry and the file change together
        self.lock = threading.Lock()

    def _file(self, name: str) -> Path:
        if not is_name(name):  # a Recipe's name is one already; a URL's may not be
            raise ValueError(f"not a recipe name: {name!r}")
        return self.folder / f"{name}.json"

    def save(self, recipe: Recipe, *, actor: str, keep_place: bool) -> None:
        """Write ``recipe`` (atomically). ``keep_place``: the name keeps its place in the
        load order (a put over a recipe the server holds, as the registry keeps it); else
        it goes last, as a new name does while the server runs. A Modbus PLC picks a
        recipe by its index in that order, so a restart must give the same order: a
        counter, not a clock (a box's clock may step back before NTP)."""
        places = self._places()
        place = places.get(recipe.name) if keep_place else None
        if place is None:
            place = max(places.values(), default=0) + 1
        doc = {"format_version": SAVED_FORMAT, "put_by": actor,
               "put_at": datetime.now(UTC).isoformat(timespec="seconds"), "place": place,
               "recipe": recipe.model_dump(mode="json", exclude_none=True)}
        write_atomic(self._file(recipe.name), json.dumps(doc, indent=1).encode())

    def _places(self) -> dict[str, int]:
        """Each saved name's place in the load order (files that do not read: none)."""
        places: dict[str, int] = {}
        for path in self._files():
            try:
                place = json.loads(path.read_text()).get("place")
            except (OSError, ValueError, AttributeError, RecursionError):
                continue
            if isinstance(place, int) and not isinstance(place, bool):
                places[path.stem] = place
        return places

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in sorted(self.folder.glob("*.json")) if is_name(p.stem)]

    def _versions_file(self, name: str) -> Path:
        return self._file(name).parent / ".versions" / f"{name}.json"

    def _read_versions(self, name: str) -> dict[str, object]:
        """``name``'s versions file as read ({} for none); one that does not read is
        logged and taken as none (the check against the recipe judging now still holds)."""
        path = self._versions_file(name)
        try:
            doc = json.loads(_read_small(path))
            if not isinstance(doc, dict) or doc.get("format_version") != VERSIONS_FORMAT:
                raise ValueError(f"format_version must be {VERSIONS_FORMAT}")
            if not isinstance(doc.get("versions"), dict):
                raise ValueError("no versions")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            log.warning("recipe %s: the versions that judged are not read: %s (file %s)", name,
                        exc if not isinstance(exc, RecursionError) else "nested too deeply", path)
            return {}
        return doc

    def judged(self, name: str) -> dict[str, str]:
        """The versions of ``name`` that judged here (version -> :func:`rules_digest`); a
        file that does not read is logged and taken as none (the check against the recipe
        judging now still holds)."""
        return self._judged(name, self._read_versions(name))

    def _judged(self, name: str, doc: dict[str, object]) -> dict[str, str]:
        versions = doc.get("versions", {})
        assert isinstance(versions, dict)  # (:meth:`_read_versions`)
        # an entry that is no recipe version and digest (edited by hand: a version of
        # 5,000 digits was a ValueError past Python's int digit limit in version_key, a
        # 500 on every put and a traceback at every start; review, session 55) is left out
        kept = {v: d for v, d in versions.items() if _is_version(v)
                and isinstance(d, str) and _DIGEST.fullmatch(d)}
        if len(kept) < len(versions):
            log.warning("recipe %s: %d entry(ies) of its versions file are not a version with "
                        "a rules digest: left out (file %s)", name,
                        len(versions) - len(kept), self._versions_file(name))
        return kept

    def regions(self, name: str) -> dict[str, JudgedRegions]:
        """Where each version of ``name`` that judged here judges a frame (version ->
        its roi and ignore), as kept beside its rules' digest since session 56. A version
        missing (kept by an earlier release, or its regions past the file's budget) or an
        entry that does not read is not known: its frames are pulled whole, said."""
        doc = self._read_versions(name)
        return self._regions(name, doc, self._judged(name, doc))

    def _regions(self, name: str, doc: dict[str, object],
                 judged: dict[str, str]) -> dict[str, JudgedRegions]:
        kept = doc.get("regions", {})
        if not isinstance(kept, dict):
            log.warning("recipe %s: the regions of its versions are not read: not a mapping "
                        "(file %s)", name, self._versions_file(name))
            return {}
        found: dict[str, JudgedRegions] = {}
        for version, regions in kept.items():
            if version not in judged:  # regions without their version's digest: no word
                continue
            try:
                found[version] = _REGIONS.validate_python(regions)
            except (ValidationError, RecursionError):
                continue
        if len(found) < len(kept):
            log.warning("recipe %s: %d entry(ies) of its versions file's regions are not a "
                        "judged version's roi and ignore: left out, their frames pulled "
                        "whole (file %s)", name, len(kept) - len(found),
                        self._versions_file(name))
        return found

    def remember(self, name: str, *recipes: Recipe) -> None:
        """Keep the versions of ``recipes`` (of ``name``) as ones that judged, with their
        rules' digests and their regions (roi and ignore: ``data pull`` paints out what
        a version never judged, after it stops judging too); a version kept already keeps
        its first digest, and gets its regions only when its digest is this recipe's
        (nothing written when every one is kept)."""
        doc = self._read_versions(name)
        versions = self._judged(name, doc)
        regions = {v: r.model_dump(mode="json", exclude_defaults=True)
                   for v, r in self._regions(name, doc, versions).items()}
        known, had = (len(versions), len(regions)), set(regions)
        for recipe in recipes:
            versions.setdefault(recipe.version, rules_digest(recipe))
            if versions[recipe.version] == rules_digest(recipe):
                regions.setdefault(recipe.version, recipe.regions.model_dump(
                    mode="json", exclude_defaults=True))
        if (len(versions), len(regions)) == known and self._versions_file(name).exists():
            return
        out = json.dumps({"format_version": VERSIONS_FORMAT, "recipe": name,
                          "versions": versions, "regions": regions}, indent=1).encode()
        if len(out) > MAX_VERSIONS_BYTES // 2:
            # the digests must stay readable (they hold a version to its rules): regions
            # past half the file's bound are left out, their frames pulled whole (said)
            log.warning("recipe %s: the regions of version(s) %s not kept (the versions "
                        "file would pass %d bytes): their frames are pulled whole", name,
                        ", ".join(v for v in regions if v not in had), MAX_VERSIONS_BYTES // 2)
            out = json.dumps({"format_version": VERSIONS_FORMAT, "recipe": name,
                              "versions": versions, "regions": {
                                  v: r for v, r in regions.items() if v in had}},
                             indent=1).encode()
        # (own_tmp: the workers of one server each remember the configured recipes)
        write_atomic(self._versions_file(name), out, own_tmp=True)

    def check_configured(self, recipes: list[tuple[str, Recipe]]) -> None:
        """Refuse a configured recipe (``(file, recipe)``) whose version judged on this
        server before with other rules (:meth:`judged`): its file was edited without
        raising the version, and stored verdicts naming that version would stand for two
        rule sets, as a PUT of it is refused (session 55)."""
        for source, recipe in recipes:
            if judged_otherwise(self.judged(recipe.name), recipe) is not None:
                raise ConfigError(
                    f"{source}: recipe {recipe.name} version {recipe.version} judged on "
                    f"this server before with other rules (kept in "
                    f"{self._versions_file(recipe.name)}), and stored verdicts name the "
                    "version that judged them: give the changed rules a version of their "
                    "own (raise 'version' in the file), or put the rules back")

    def remember_configured(self, recipes: list[Recipe]) -> None:
        """:meth:`remember` each configured recipe's version, so that a later edit of its
        file under the same version is refused at start; a folder that cannot be written
        is logged, not a reason to refuse to start."""
        for recipe in recipes:
            try:
                self.remember(recipe.name, recipe)
            except OSError as exc:
                log.warning("recipe %s version %s: not kept as judged (%s): an edit of its "
                            "file under this version is not found at the next start",
                            recipe.name, recipe.version, exc.strerror or exc)

    def raw(self, name: str) -> bytes | None:
        """The saved file's bytes (to put back if a change does not stand), None if none."""
        try:
            return self._file(name).read_bytes()
        except FileNotFoundError:
            return None

    def put_back(self, name: str, raw: bytes | None) -> None:
        """Undo a :meth:`save`: the file as :meth:`raw` read it, or none."""
        if raw is None:
            self.delete(name)
        else:
            write_atomic(self._file(name), raw)

    def has(self, name: str) -> bool:
        return is_name(name) and self._file(name).is_file()

    def delete(self, name: str) -> bool:
        """Drop ``name``'s saved recipe (for good: the folder is synced, or a power cut
        could bring it back); False when there was none."""
        if not self.has(name):
            return False
        self._file(name).unlink()
        fsync_folder(self.folder)
        return True

    def load(self) -> list[SavedRecipe]:
        """Every saved recipe that reads and validates, in load order. One that does not
        (edited by hand, written by a newer Lineside) is logged and left in place, not
        loaded."""
        found: list[tuple[int, SavedRecipe]] = []
        for path in self._files():
            try:
                doc = json.loads(path.read_text())
                if not isinstance(doc, dict) or doc.get("format_version") != SAVED_FORMAT:
                    raise ValueError(f"format_version must be {SAVED_FORMAT} (a newer Lineside "
                                     "wrote it, or it is not a saved recipe)")
                recipe = Recipe.model_validate(doc.get("recipe"))
                if recipe.name != path.stem or recipe.remote is not None:
                    raise ValueError("its recipe's name is not its file's, or it sets remote")
                place = doc.get("place")
                found.append((place if isinstance(place, int) else 0, SavedRecipe(
                    recipe, str(doc.get("put_by", "?")), str(doc.get("put_at", "?")))))
            except ValidationError as exc:
                log.warning("recipe %s put over the API is not loaded: %s (file %s)",
                            path.stem, describe_validation(exc.errors()), path)
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
                log.warning("recipe %s put over the API is not loaded: %s (file %s)",
                            path.stem, exc if not isinstance(exc, RecursionError)
                            else "nested too deeply", path)
        return [saved for _, saved in sorted(found, key=lambda f: (f[0], f[1].recipe.name))]


def judged_otherwise(judged: dict[str, str], recipe: Recipe) -> str | None:
    """The version in ``judged`` (version -> :func:`rules_digest`) that is ``recipe``'s
    (one place by :func:`version_key`: ``3`` and ``03``) and judged with other rules than
    it holds; None when none did. The one rule of a PUT (``server/routes/admin.py``) and
    of a configured file at start (:meth:`SavedRecipes.check_configured`)."""
    digest, key = rules_digest(recipe), version_key(recipe.version)
    return next((v for v, was in judged.items() if version_key(v) == key and was != digest),
                None)


def _is_version(value: object) -> bool:
    """Whether ``value`` is a recipe's version as a put or a file gives one."""
    try:
        _VERSION.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


def _read_small(path: Path) -> str:
    """A versions file's text: a regular file of at most :data:`MAX_VERSIONS_BYTES`, else
    ValueError (a pipe put in its place was waited on for ever at start; a link to a
    device or a file of gigabytes read whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > MAX_VERSIONS_BYTES:
                raise ValueError(f"larger than {MAX_VERSIONS_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)
