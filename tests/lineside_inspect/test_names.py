"""Names that become paths or keys are full-matched: no trailing newline, no traversal,
no look-alike letters, no empty or over-long names; nothing is created for a bad one."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import PackageError
from lineside_inspect.names import is_name
from lineside_inspect.package import load_package
from lineside_inspect.recipes import Recipe
from lineside_inspect.references import InvalidReferenceName, ReferenceLibrary

MODEL = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
BAD_NAMES = {
    "trailing newline": "a\n",
    "inner newline": "a\nb",
    "traversal": "a/../b",
    "dot dot": "..",
    "dot": ".",
    "hidden": ".a",
    "empty": "",
    "129 chars": "a" * 129,
    "cyrillic a": "\u0430bc",
    "fullwidth a": "\uff41bc",
    "zero width space": "a\u200b",
    "backslash": "a\\b",
    "NUL": "a\x00",
    "space": "a b",
}


def test_the_rule_full_matches() -> None:
    assert is_name("a") and is_name("station-1.v2_x") and is_name("a" * 128)
    for bad in BAD_NAMES.values():
        assert not is_name(bad), repr(bad)


def test_why_not_dollar() -> None:
    """Python's ``$`` matches before a trailing newline; pydantic's default (Rust) engine
    does not, its Python engine does: so names never rely on ``^...$``."""
    assert re.match(r"^[a-z]+$", "a\n") and not re.fullmatch(r"[a-z]+", "a\n")

    class Rust(BaseModel):
        v: str = Field(pattern=r"^[a-z]+$")

    class Python(BaseModel):
        model_config = ConfigDict(regex_engine="python-re")
        v: str = Field(pattern=r"^[a-z]+$")

    with pytest.raises(ValidationError):
        Rust(v="a\n")
    assert Python(v="a\n").v == "a\n"


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_bad_names_are_refused_everywhere(case: str, tmp_path: Path) -> None:
    bad = BAD_NAMES[case]
    library = ReferenceLibrary(tmp_path / "refs")
    with pytest.raises(InvalidReferenceName):
        library.put(bad, b"irrelevant: the name is checked first")
    assert not (tmp_path / "refs").exists() or not any((tmp_path / "refs").iterdir())
    with pytest.raises(ValidationError):
        CameraConfig(id=bad, source="0")
    with pytest.raises(ValidationError):
        Recipe(name=bad, model="deeppcb")
    with pytest.raises(ValidationError):
        Recipe(name="r", model=bad)


@pytest.mark.parametrize("field", ["name", "version"])
def test_model_card_names_are_checked(field: str, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(MODEL, pkg)
    card = json.loads((pkg / "model.json").read_text())
    card[field] = "1\n"
    (pkg / "model.json").write_text(json.dumps(card))
    with pytest.raises(PackageError, match=field):
        load_package(pkg)


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_put_reference_with_a_bad_name_creates_nothing(srv, image_bytes: bytes, case: str) -> None:
    bad = BAD_NAMES[case]
    folder = srv.app.state.references.folder
    before = sorted(folder.iterdir()) if folder.exists() else []
    jpeg = {"content-type": "image/jpeg"}
    with srv.client("admin", follow_redirects=True) as admin:  # "/v1/references/" -> 307
        r = admin.put(f"/v1/references/{quote(bad, safe='')}", content=image_bytes, headers=jpeg)
        # these never reach the route: an empty segment, a "/" (%2F is decoded before
        # routing), "." and ".." (the client removes dot segments, as URLs require)
        unroutable = case in ("empty", "traversal", "dot", "dot dot")
        # a control character (newline, NUL) is refused with the URL, before any route
        control = any(c < " " for c in bad)
        assert r.status_code in ((404, 405) if unroutable else (400,) if control else (422,)), \
            r.text
        assert r.json()["error"]["code"] in {"invalid_reference_name", "not_found",
                                             "method_not_allowed", "invalid_url"}
        if r.status_code == 422:
            assert "1-128 ASCII letters" in r.json()["error"]["message"]
    after = sorted(folder.iterdir()) if folder.exists() else []
    assert after == before


def test_put_recipe_with_a_bad_name_is_422(srv) -> None:
    with srv.client("admin") as admin:
        r = admin.put("/v1/recipes/a%0A", json={"name": "a\n", "model": "deeppcb"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_url"  # the URL's
        r = admin.put("/v1/recipes/a", json={"name": "a\n", "model": "deeppcb"})  # the body's
        assert r.status_code == 422 and "name" in r.json()["error"]["message"]
        assert "a\n" not in {x["name"] for x in admin.get("/v1/recipes").json()}
