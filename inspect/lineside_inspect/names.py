"""One rule for the names that become file names, URL segments or registry keys: reference
images, cameras, recipes, model names and versions.

Always full-matched (``re.fullmatch``): ``re.match(r"^...$")`` accepts a trailing newline
(``$`` matches before it), which turned ``PUT /v1/references/a%0A`` into a file ``a\\n.jpg``.
pydantic's ``pattern=`` happens to use a Rust engine whose ``$`` does not, but it falls back
to Python's ``re`` for some patterns and configurations, so names never depend on it.
ASCII only, so no look-alike letters; a leading letter or digit, so never ``.`` or ``..``.

Paths made of such names (object store keys, a package archive's members) have their rule
here too: ``/``-separated parts, none empty, ``.`` or ``..``, so none can climb out of the
folder or prefix it is joined to.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, StringConstraints, WithJsonSchema

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
NAME_RULE = "1-128 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit"


# a model's classes: a dataset may hold no more (it would train a model whose card is
# refused at export), a card no more (the fleet hub bounds the records it takes so)
MAX_CLASSES = 1_000
MAX_CLASS_NAME = 128  # characters of a class name (cards, metrics, pages)


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def _check(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"must be {NAME_RULE}")
    return value


# a pydantic field type; the schema's pattern is for documentation (ECMA ``$`` has no
# newline exception), the check is the full match above
Name = Annotated[str, AfterValidator(_check), WithJsonSchema(
    {"type": "string", "pattern": f"^{NAME_RE.pattern}$", "maxLength": 128})]


# the control characters (C0 and DEL): no name, id, label or filter has one; the Guard
# refuses them in URLs (server/guard.py), OneLine in a body's single-line values
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


def _one_line(value: str) -> str:
    if CONTROL_RE.search(value):
        raise ValueError("must not contain a control character (NUL, CR, LF, ...)")
    return value


# a single-line value a request brings (a class label): no control character at all
OneLine = Annotated[str, AfterValidator(_one_line)]


# the characters that reorder text around them (bidi embeddings, overrides, isolates and
# marks): a part id holding U+202E showed the review page's whole line reversed, its
# model and recipe read backwards
BIDI_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# what an identifier never holds beyond those (session 53), by Unicode category: every
# control (the C1 ones too: U+0085 is a line break to Python's splitlines, U+009B a
# terminal's escape), every format character (zero-width spaces and joiners, U+2060, the
# BOM, a soft hyphen, tags, and the bidi ones above), the line and paragraph separators
# U+2028/U+2029, and a lone surrogate: "SN-1\u200b" showed as SN-1 on every page and
# export yet matched no filter for SN-1, and each was kept and passed on as sent
NOT_PLAIN_CATEGORIES = {"Cc": "a control character", "Cf": "an invisible format character",
                        "Zl": "a line separator", "Zp": "a paragraph separator",
                        "Cs": "a lone surrogate"}


def plain_problem(value: str) -> str | None:
    """Why ``value`` is no plain identifier, naming its first character that makes it so by
    its code point (what a page, a log line or an export shows of it), or None."""
    if value.isprintable():  # the usual case, at C speed: no Cc, Cf, Zl, Zp, Cs (nor Z*)
        return None
    for at, char in enumerate(value):
        what = NOT_PLAIN_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            if BIDI_RE.fullmatch(char):
                what = "a bidirectional control character"
            return f"must not contain {what} (U+{ord(char):04X} at character {at + 1})"
    return None


def _plain_line(value: str) -> str:
    problem = plain_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# an identifier a request brings to be shown and kept (a part id): one line, read in order,
# every character one that shows (names.plain_problem)
PlainLine = Annotated[str, AfterValidator(_plain_line)]

# a part id: what POST /v1/inspect and a camera trigger keep, and what every part filter
# (GET /v1/inspections, /v1/stats, /v1/stats.csv, `lineside data pull --part-id`) is held
# to: one definition, so a filter can never take an id no inspection could have been
# stored with, nor refuse one that could. Kept as sent, surrounding spaces too (a
# fixed-width reader pads its serials): a filter matches it exactly (session 48)
PART_ID_MAX = 256
PartId = Annotated[PlainLine, StringConstraints(max_length=PART_ID_MAX)]


# free text a request brings to be kept (notes, reasons): lines and any letter are fine,
# a NUL is not (PostgreSQL's text cannot hold one), and it is refused before anything
# changes: an action applied whose audit row the database then refused left no trace
Text = Annotated[str, AfterValidator(_no_nul)]


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def scrub_text(value: Any) -> Any:
    """``value`` with every NUL and lone surrogate (JSON's ``"\\ud800"``) in its strings
    (keys too, at any depth) made U+FFFD: neither can be stored (PostgreSQL refuses a NUL,
    UTF-8 has no surrogates). For records and reviews a hub takes from boxes, where
    refusing one would stop the box's stream for good."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub_text(k): scrub_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_text(v) for v in value]
    return value


def _path_re(part: str, max_parts: int) -> re.Pattern[str]:
    return re.compile(rf"{part}(/{part}){{0,{max_parts - 1}}}")


# an object store key: up to 8 parts, each a name
OBJECT_KEY_RE = _path_re(NAME_RE.pattern, 8)
# a file in a model package archive: up to 4 parts; a part may also start with '_'
PACKAGE_MEMBER_RE = _path_re(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", 4)


def _is_path(value: object, rule: re.Pattern[str]) -> bool:
    # no part can be '.' or '..' under either rule (none starts with '.'); checked all the
    # same, so that a looser part rule later cannot open a way out
    return isinstance(value, str) and rule.fullmatch(value) is not None and \
        not any(p in (".", "..") for p in value.split("/"))


def is_object_key(value: object) -> bool:
    return _is_path(value, OBJECT_KEY_RE)


def is_package_member(value: object) -> bool:
    return _is_path(value, PACKAGE_MEMBER_RE)
