"""What a new user copies from the docs exists: every `lineside CMD [SUB] --flag` and
`make TARGET` the README and docs/ name (checked against the CLI itself, no process)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from lineside_inspect.cli import app

ROOT = Path(__file__).resolve().parents[2]
# upgrading.md and security.md's session tables quote what old releases took
DOCS = [ROOT / "README.md", ROOT / "datasets" / "README.md", ROOT / "configs" / "line" / "README.md",
        *(p for p in sorted((ROOT / "docs").rglob("*.md")) if p.name not in ("upgrading.md", "security.md"))]


def _spans(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks: where a command is quoted whole."""
    spans: list[str] = []
    for i, part in enumerate(re.split(r"^```[^\n]*\n", text, flags=re.M)):
        if i % 2:  # inside a fence (the splitter eats opening and closing fences alike)
            spans += part.replace("\\\n", " ").splitlines()
        else:
            spans += re.findall(r"`([^`\n]+)`", part)
    return spans


def _resolve(root: Any, words: list[str]) -> tuple[Any, list[str]] | None:
    cmd = root  # typer's own click (vendored): groups are what has commands
    path: list[str] = []
    for w in words:
        if not hasattr(cmd, "commands") or w not in cmd.commands:
            break
        cmd = cmd.commands[w]
        path.append(w)
    return (cmd, path) if path else None


def test_every_command_and_flag_the_docs_quote_exists() -> None:
    root = typer.main.get_command(app)
    wrong: list[str] = []
    seen = 0
    for doc in DOCS:
        for span in _spans(doc.read_text()):
            for m in re.finditer(r"(?:^|[\s(])lineside ([a-z][a-z0-9 |-]*)(.*)", span):
                # one command: up to a pipe, a chain, a comment or another command
                rest = re.split(r"\s(?:\||&&|;|#)\s|\slineside\s", m.group(2))[0]
                words = m.group(1).split()
                if words[0] == "lineside":  # `docker run IMAGE lineside CMD`: the image's name
                    words = words[1:] or [""]
                first = words[0].split("|")[0]
                found = _resolve(root, [first, *words[1:]])
                if found is None:
                    wrong.append(f"{doc.relative_to(ROOT)}: lineside {first}")
                    continue
                cmd, path = found
                if hasattr(cmd, "commands"):  # a group: `data`, or `bench model|train|...`
                    nxt = words[len(path):len(path) + 1]
                    wrong += [f"{doc.relative_to(ROOT)}: lineside {' '.join(path)} {n}"
                              for n in (nxt[0].split("|") if nxt else []) if n not in cmd.commands]
                    continue
                opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words[len(path):]) + rest)
                seen += 1
                wrong += [f"{doc.relative_to(ROOT)}: lineside {' '.join(path)} {f}"
                          for f in flags if f not in opts]
    assert seen > 50  # the parser still finds the commands
    assert wrong == []


def test_every_make_target_the_readme_names_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_./$()-]+):", makefile, flags=re.M))
    targets = {t.replace("$(VENV)", ".venv") for t in targets}
    named = set(re.findall(r"`make ([a-z.][a-z0-9./-]*)", (ROOT / "README.md").read_text()))
    named |= {m for span in _spans((ROOT / "README.md").read_text())
              for m in re.findall(r"^make ([a-z.][a-z0-9./-]*)", span)}
    assert {"serve", "test", "line-demo"} <= named
    assert sorted(named - targets) == []
