"""Standing rules: no stdlib shadowing, a torch-free edge side, lint settings kept."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import lineside_inspect

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_inspect_not_shadowed_from_repo_root() -> None:
    code = "import dataclasses, inspect; print(inspect.signature(len))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(obj, /)"
    assert not (ROOT / "inspect" / "__init__.py").exists()
    assert not (ROOT / "training" / "__init__.py").exists()


def test_pytest_runs_from_repo_root() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q",
                          "tests/lineside_inspect/test_guards.py"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_edge_side_never_imports_torch() -> None:
    modules = [m.name for m in pkgutil.walk_packages(lineside_inspect.__path__, "lineside_inspect.")]
    assert "lineside_inspect.cli" in modules and len(modules) > 10
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'torch' or m.startswith(('torch.', 'torchvision', 'lineside_training')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"edge modules pulled in: {out.stdout.strip()}"


def test_lint_settings_keep_a005_and_importlib_mode() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "A" in cfg["tool"]["ruff"]["lint"]["select"]
    assert "A005" not in cfg["tool"]["ruff"]["lint"].get("ignore", [])
    assert "--import-mode=importlib" in cfg["tool"]["pytest"]["ini_options"]["addopts"]


def test_public_api_resolves() -> None:
    for name in lineside_inspect.__all__:
        assert getattr(lineside_inspect, name) is not None, name


def private_edge_names(root: Path) -> list[str]:
    """``file:line name`` of every private ``lineside_inspect`` name the Python files under
    ``root`` use: an imported module or name starting with ``_`` (dunders such as
    ``__version__`` are public), by import, attribute or import_module string."""

    def private(dotted: str) -> bool:
        parts = dotted.split(".")
        return parts[0] == "lineside_inspect" and any(
            p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts[1:])

    def dotted(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute):
                names = [d for d in [dotted(node)] if d]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            found += [f"{path.relative_to(root)}:{node.lineno} {n}"  # type: ignore[attr-defined]
                      for n in names if private(n)]
    return found


def test_training_uses_only_public_edge_names() -> None:
    """The training side depends on the edge side's public face (e.g.
    lineside_inspect.opencv), never on its private modules or names."""
    assert private_edge_names(ROOT / "training") == []


def test_private_edge_names_are_found(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "import lineside_inspect._cv\n"
        "from lineside_inspect._cv import cv2\n"
        "from lineside_inspect.runtime import _private\n"
        "from lineside_inspect.opencv import cv2 as ok\n"
        "import lineside_inspect\n"
        "v = lineside_inspect.__version__\n"
        "x = lineside_inspect._LAZY\n"
        "m = __import__('importlib').import_module('lineside_inspect._cv')\n")
    found = {f.split(" ", 1)[1] for f in private_edge_names(tmp_path)}
    assert found == {"lineside_inspect._cv", "lineside_inspect._cv.cv2",
                     "lineside_inspect.runtime._private", "lineside_inspect._LAZY"}


# edge modules that still take a name from the package's __init__ (none)
PENDING_PACKAGE_IMPORTS: set[str] = set()


def test_edge_modules_take_nothing_from_the_package_init() -> None:
    """Modules import submodules, never names defined in lineside_inspect/__init__.py
    (e.g. ``__version__``: lineside_inspect.version), so nothing imports back through the
    package's lazy public API (the cycle __init__ -> server.app -> __init__)."""
    pkg = Path(lineside_inspect.__file__).parent
    found = set()
    for path in sorted(pkg.rglob("*.py")):
        if path == pkg / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "lineside_inspect" and not node.level:
                found |= {f"{path.relative_to(pkg).as_posix()}:{a.name}" for a in node.names
                          if not ((pkg / f"{a.name}.py").is_file() or (pkg / a.name).is_dir())}
    assert found <= PENDING_PACKAGE_IMPORTS


def test_one_pixel_limit() -> None:
    """LINESIDE_MAX_IMAGE_PIXELS (OpenCV's own limit) is also the default of the server's
    max_pixels, the reference library's and the decoders'."""
    code = ("import inspect\n"
            "from lineside_inspect.config import Settings\n"
            "from lineside_inspect.imageio import decode_image\n"
            "from lineside_inspect.references import ReferenceLibrary\n"
            "print(Settings().max_pixels, ReferenceLibrary('.').max_pixels,\n"
            "      inspect.signature(decode_image).parameters['max_pixels'].default)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINESIDE_", "OPENCV_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "LINESIDE_MAX_IMAGE_PIXELS": "4096"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4096"] * 3


# rooms that everything else builds on, and the rooms built on them, which they must not
# import (the brief: "lower rooms never import higher ones (store and ui do not import
# server)"). One edge up is allowed: ``config`` (the server's settings) composes each
# higher room's settings schema, ``<room>/config.py``, which itself imports only lower
# rooms. Every room is in one list: a new one must be placed.
HIGHER = {"server", "fleet", "lifecycle", "line", "cli", "serve", "serve_process", "bench", "bench_tiles"}
LOWER = {"store", "ui", "cameras", "dataset", "runtime", "recipes", "package", "references",
         "imageio", "inspector", "schemas", "draw", "redact", "names", "errors", "atomic",
         "config", "allocator", "boxes", "opencv", "version", "triton", "bounded_read", "oip",
         "user_files", "outage_log"}
SETTINGS_SCHEMAS = {f"lineside_inspect.{room}.config" for room in ("fleet", "lifecycle", "line")}
EDGE = ROOT / "inspect" / "lineside_inspect"


def _imported(path: Path, node: ast.AST) -> list[str]:
    """The ``lineside_inspect`` modules (and names, for ``from X import name``) one node
    imports: absolute or relative imports, and ``import_module("...")`` literals."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the file's package, up node.level - 1
            package = list(path.relative_to(EDGE.parent).with_suffix("").parts)[:-1]
            base = package[:len(package) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [module] + [f"{module}.{a.name}" for a in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def edge_imports_by_room() -> dict[str, set[tuple[str, str]]]:
    """Per top-level room of ``lineside_inspect``: (file:line, module) of each module of
    another room its files import, inside functions too."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(EDGE.rglob("*.py")):
        room = path.relative_to(EDGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(path, node):
                parts = name.split(".")
                if parts[0] == "lineside_inspect" and len(parts) > 1 and parts[1] != room:
                    where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                    found.setdefault(room, set()).add((where, name))
    return found


def test_every_room_is_placed() -> None:
    rooms = {p.name.removesuffix(".py") for p in EDGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and any(p.rglob("*.py"))))
             and p.name != "__init__.py"}
    assert rooms == HIGHER | LOWER, f"place these rooms: {sorted(rooms ^ (HIGHER | LOWER))}"


def test_lower_rooms_never_import_higher_ones() -> None:
    graph = edge_imports_by_room()
    assert any(w.startswith("inspect/lineside_inspect/server/app.py") and m == "lineside_inspect.ui"
               for w, m in graph["server"])  # the scan sees `from lineside_inspect import ui`

    def higher(module: str) -> bool:
        parts = module.split(".")
        return parts[1] in HIGHER and not any(
            module == s or module.startswith(s + ".") for s in SETTINGS_SCHEMAS)

    bad = sorted(f"{where} ({room} imports {module})" for room in LOWER
                 for where, module in graph.get(room, set()) if higher(module))
    # the settings schemas themselves import only lower rooms
    for schema in sorted(SETTINGS_SCHEMAS):
        path = EDGE.parent / (schema.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in _imported(path, node)
                    if m.startswith("lineside_inspect.") and m.split(".")[1] in HIGHER
                    and not any(m == s or m.startswith(s + ".") for s in SETTINGS_SCHEMAS)
                    and m.split(".")[:2] != schema.split(".")[:2]]
    assert not bad, "\n".join(bad)


def test_importing_a_lower_room_loads_no_higher_one() -> None:
    """What the static scan cannot follow (an import through another module): each lower
    room imported alone in a fresh interpreter loads no higher room's modules beyond the
    settings schemas (and their packages). One interpreter imports the third-party
    libraries (and no ``lineside_inspect`` module), then forks a child per room: each child
    starts with no ``lineside_inspect`` module loaded, as a fresh interpreter does, without
    paying numpy's, OpenCV's, SQLAlchemy's... start-up 25 times."""
    allowed = sorted(SETTINGS_SCHEMAS | {s.rsplit(".", 1)[0] for s in SETTINGS_SCHEMAS})
    code = (
        "import importlib, os, sys, traceback\n"
        "for lib in ('numpy', 'cv2', 'sqlalchemy', 'pydantic', 'pydantic_settings', 'onnx',\n"
        "            'onnxruntime', 'yaml', 'asyncio', 'email', 'starlette', 'httpx'):\n"
        "    try: importlib.import_module(lib)\n"
        "    except ImportError: pass\n"
        "ours = [m for m in sys.modules if m.split('.')[0] == 'lineside_inspect']\n"
        "assert not ours, ours\n"
        f"higher, allowed = {sorted(HIGHER)!r}, {allowed!r}\n"
        f"for room in {sorted(LOWER)!r}:\n"
        "    r, w = os.pipe()\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.close(r)\n"
        "        try:\n"
        "            importlib.import_module(f'lineside_inspect.{room}')\n"
        "            os.write(w, ','.join(m for m in sys.modules\n"
        "                                 if m.startswith('lineside_inspect.')).encode())\n"
        "            status = 0\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "            status = 1\n"
        "        sys.stdout.flush(); sys.stderr.flush()\n"
        "        os._exit(status)\n"
        "    os.close(w)\n"
        "    with os.fdopen(r) as f:\n"
        "        out = f.read().split(',')\n"
        "    _, status = os.waitpid(pid, 0)\n"
        "    if os.waitstatus_to_exitcode(status) != 0: sys.exit(f'importing {room} failed')\n"
        "    assert f'lineside_inspect.{room}' in out, (room, out)\n"
        "    bad = [m for m in out if m.split('.')[1] in higher and m not in allowed]\n"
        "    if bad: print(room, bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", out.stdout
