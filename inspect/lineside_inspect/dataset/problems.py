"""Problems summarised by kind: thousands of findings are usually a handful of causes
(a folder not found, a field written another way), so a user sees the causes first,
each with its count and one example, then the full list."""

from __future__ import annotations

import re
from collections import Counter

from lineside_inspect.errors import Problem
from lineside_inspect.imageio import IMAGE_SUFFIXES, UNSUPPORTED_IMAGE_SUFFIXES

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_TOKEN = re.compile(r"\S+")
_FILE_END = re.compile(r"^.*\.(?:jpe?g|png|bmp|xml|txt|json)\b", re.IGNORECASE)
# a number standing alone (or a size, 200x200), not the digit of a name (x2, y1 keep theirs)
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?:x\d+)?(?![A-Za-z_\d])")


def kind_of(problem: Problem) -> str:
    """The message with its particulars (names, paths, numbers) blanked out: problems of
    one kind share it."""
    text = _QUOTED.sub("…", problem.message)
    text = _TOKEN.sub(_blank_path, text)
    return _NUMBER.sub("N", text)


def _blank_path(token: re.Match[str]) -> str:
    """A word that is a path (a slash in it) or a file name (up to its extension) blanked.
    Word by word: one pattern over the whole message backtracked from every position of a
    long word (24 s for a 50,000-character one)."""
    word = token.group()
    if "/" in word or "\\" in word:
        return "…"
    return _FILE_END.sub("…", word)


def summarise(problems: list[Problem]) -> list[str]:
    """One line per kind, most frequent first: ``170 x <kind> (e.g. <first problem>)``."""
    first: dict[str, Problem] = {}
    counts: Counter[str] = Counter()
    for p in problems:
        kind = kind_of(p)
        counts[kind] += 1
        first.setdefault(kind, p)
    return [f"{n} x {kind}  (e.g. {first[kind]})" for kind, n in counts.most_common()]


def images_concerned(problems: list[Problem]) -> int:
    """How many images the problems concern: a problem of a label file with no image
    (an XML, a YOLO .txt) has that file as its subject so that skipping it drops no image,
    and is not counted as a skipped image (an image in a format not read is one)."""
    suffixes = IMAGE_SUFFIXES + UNSUPPORTED_IMAGE_SUFFIXES
    return len({p.subject for p in problems
                if p.subject is not None and p.subject.lower().endswith(suffixes)})
