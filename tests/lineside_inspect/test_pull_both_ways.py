"""`data pull` from a store folder and from its server over HTTP place each stored
inspection by one set of steps (``store.pull._Placing``): the same item gives the same
dataset and the same reason when left out, whichever way it was pulled. The two paths
each carried a copy, and the store's lacked the checks the server's had (session 41).

A real server with the bundled reference model, the sample's golden and test image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from lineside_inspect.dataset import read_dataset, validate_dir
from lineside_inspect.imageio import read_image
from lineside_inspect.opencv import cv2
from lineside_inspect.store.models import InspectionRow
from lineside_inspect.store.pull import pull_from_server, pull_from_store

from .conftest import ROOT, keyed, start_server

REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
PAIR = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041"


def _png(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", image)[1])


def _left_out(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The "id: why" entries of the pull's WARNING naming what it left out."""
    [said] = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "inspection(s) left out" in r.getMessage()]
    return sorted(said.split("): ", 1)[1].split("; "))


def test_the_same_stored_item_is_placed_alike_from_the_store_and_over_http(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Pulled from the store, an image that does not decode went into the set (`data
    validate` refused it), as did one not at its record's size, and a golden whose bytes
    are not the sha256 its record names; a stored shift beyond alignment's was its own
    WARNING line. Over HTTP each was left out, named in the pull's one WARNING: now both."""
    part, golden = read_image(PAIR / "00041000_test.jpg"), read_image(PAIR / "00041000_temp.jpg")
    other = golden.copy()
    other[0, 0] = 255 - other[0, 0]  # another golden (one pixel), of the same size
    srv, stop = start_server(keyed(models=[str(REF_MODEL)],
                                   recipes=[str(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml")],
                                   store_pass_rate=1.0))
    try:
        ids: dict[str, str] = {}
        with srv.client("admin") as c:
            for name, image in (("golden", golden), ("other", other)):
                assert c.put(f"/v1/references/{name}", content=_png(image),
                             headers={"content-type": "image/png"}).status_code == 200
            for name, ref in (("kept", "golden"), ("broken", "golden"), ("resized", "golden"),
                              ("shifted", "golden"), ("altered", "other")):
                r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref", "reference": ref},
                           files={"image": ("f.png", _png(part), "image/png")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                assert r.json()["verdict"] == "fail" and r.json()["defects"], r.text
                ids[name] = r.json()["id"]
        store = srv.app.state.store
        store.flush()  # the journal applied: the rows are in the database
        with Session(store.engine) as s, s.begin():
            rows = {name: s.get(InspectionRow, iid) for name, iid in ids.items()}
            shifted = rows["shifted"]
            assert shifted is not None
            shifted.reference_check = {**(shifted.reference_check or {}), "shift": [1e6, 0.0]}
            files = {name: store.images_dir / str(row.image_path)
                     for name, row in rows.items() if row is not None}
            other_file = store.images_dir / str(rows["altered"].reference_path)  # type: ignore[union-attr]
        files["broken"].write_bytes(b"\x89PNG not an image")
        files["resized"].write_bytes(_png(np.zeros((10, 10, 3), np.uint8)))
        other[1, 1] = 255 - other[1, 1]  # the stored golden replaced: its name says otherwise
        other_file.write_bytes(_png(other))

        got = {}
        for how in ("server", "store"):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="lineside"):
                if how == "server":
                    pull_from_server(srv.url, tmp_path / how, key="reviewer-secret",
                                     reviewed=False)
                else:
                    pull_from_store(store, tmp_path / how, reviewed=False)
            assert validate_dir(tmp_path / how) == []
            got[how] = (sorted(r.file_name for r in read_dataset(tmp_path / how).images),
                        _left_out(caplog))
    finally:
        stop()
    assert got["store"] == got["server"]
    names, left_out = got["store"]
    assert [Path(n).stem for n in names if not n.startswith("references/")] == [ids["kept"]]
    assert len(names) == 2  # and its golden
    assert [e.split(": ", 1)[0] for e in left_out] == sorted(
        ids[n] for n in ("broken", "resized", "shifted", "altered"))
    said = " ".join(left_out)
    assert f"{ids['broken']}: its image: " in said
    assert f"{ids['resized']}: its image is 10x10" in said
    assert f"{ids['shifted']}: its stored alignment shift [1000000.0, 0.0]" in said
    assert f"{ids['altered']}: its golden image has sha256 " in said


def test_a_pull_takes_only_the_recipes_asked_for_from_a_server_and_a_store(
        tmp_path: Path, database_url: str | None) -> None:
    """A box judging with a single-image detector and a reference model (`make serve`'s
    config) stores both kinds of inspections; a pull took them all as one set, and the
    reference training config refused its single-image frames, which have no golden.
    `--recipe NAME` (repeatable) pulls only those recipes' inspections, over HTTP (the
    list's ``recipe`` filter) and from the store (SQLite and PostgreSQL) alike; a name that
    is not one is refused, named; a recipe with no inspections is an empty pull, said."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app
    from lineside_inspect.errors import DatasetError

    from .conftest import MODEL, ROLE_KEYS

    part, golden = read_image(PAIR / "00041000_test.jpg"), read_image(PAIR / "00041000_temp.jpg")
    singles = [next((PAIR.parent / g).glob("*_test.jpg")) for g in ("group13000", "group20085")]
    data_dir = tmp_path / "box"
    srv, stop = start_server(keyed(
        models=[str(MODEL), str(REF_MODEL)], data_dir=str(data_dir), database_url=database_url,
        recipes=[str(ROOT / "configs" / "recipes" / n) for n in ("deeppcb.yaml", "deeppcb-ref.yaml")],
        store_pass_rate=1.0))
    runner, key = CliRunner(), ROLE_KEYS["reviewer"]
    try:
        made: dict[str, set[str]] = {"deeppcb": set(), "deeppcb-ref": set()}
        with srv.client("admin") as c:
            assert c.put("/v1/references/golden", content=_png(golden),
                         headers={"content-type": "image/png"}).status_code == 200
            r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref", "reference": "golden"},
                       files={"image": ("f.png", _png(part), "image/png")})
            assert r.status_code == 200 and r.json()["stored"], r.text
            made["deeppcb-ref"].add(r.json()["id"])
            for picture in singles:
                r = c.post("/v1/inspect", params={"recipe": "deeppcb"},
                           files={"image": ("f.jpg", picture.read_bytes(), "image/jpeg")})
                assert r.status_code == 200 and r.json()["stored"], r.text
                made["deeppcb"].add(r.json()["id"])
        store = srv.app.state.store
        store.flush()
        every = made["deeppcb"] | made["deeppcb-ref"]
        for asked, want in ((None, every), (["deeppcb-ref"], made["deeppcb-ref"]),
                            (["deeppcb"], made["deeppcb"]),
                            (["deeppcb", "deeppcb-ref", "deeppcb"], every)):
            for how in ("server", "store"):
                dst = tmp_path / f"{how}-{'+'.join(asked or ['all'])}"
                if how == "server":
                    pull_from_server(srv.url, dst, key=key, reviewed=False, recipes=asked)
                else:
                    pull_from_store(store, dst, reviewed=False, recipes=asked)
                assert validate_dir(dst) == []
                images = read_dataset(dst).images
                frames = {Path(r.file_name).stem: r for r in images
                          if not r.file_name.startswith("references/")}
                assert set(frames) == want, (how, asked)
                # a reference recipe's pull is pairs only: each frame names its golden
                assert all(r.reference for r in frames.values()) == (asked == ["deeppcb-ref"])
                assert any(r.file_name.startswith("references/") for r in images) \
                    == ("deeppcb-ref" in (asked or ["deeppcb-ref"]))
        # a name no recipe can have: refused before anything is listed, named
        for how in ("server", "store"):
            for bad in ("../x", "", "a b", "x" * 129):
                with pytest.raises(DatasetError, match=r"--recipe '.*': must be 1-128 ASCII"):
                    if how == "server":
                        pull_from_server(srv.url, tmp_path / "bad", key=key, recipes=[bad])
                    else:
                        pull_from_store(store, tmp_path / "bad", recipes=[bad])
        assert not (tmp_path / "bad").exists()
        result = runner.invoke(app, ["data", "pull", srv.url, str(tmp_path / "cli-bad"),
                                     "--key", key, "--recipe", "../x"])
        assert result.exit_code == 2 and "--recipe '../x': must be 1-128 ASCII letters" \
            in result.output, result.output
        # a recipe the server has no inspections of: an empty pull, said so
        result = runner.invoke(app, ["data", "pull", srv.url, str(tmp_path / "cli-none"),
                                     "--key", key, "--no-reviewed", "--recipe", "nope"])
        assert result.exit_code == 2 and "no reviewed inspections with a stored image match " \
            "(of recipe 'nope')" in result.output, result.output
        result = runner.invoke(app, ["data", "pull", srv.url, str(tmp_path / "cli-ref"),
                                     "--key", key, "--no-reviewed", "--recipe", "deeppcb-ref"])
        assert result.exit_code == 0 and "pulled 2 images" in result.output, result.output
    finally:
        stop()
    # from the store folder, as an operator runs it on the box
    where = ["--database-url", database_url] if database_url else []
    for asked, want in (("deeppcb", made["deeppcb"]), ("nope", set())):
        result = runner.invoke(app, ["data", "pull", str(data_dir), str(tmp_path / f"cli-{asked}"),
                                     "--no-reviewed", "--recipe", asked, *where])
        if want:
            assert result.exit_code == 0, result.output
            assert {Path(r.file_name).stem for r in read_dataset(tmp_path / "cli-deeppcb").images} \
                == want
        else:
            assert result.exit_code == 2 and "(of recipe 'nope')" in result.output, result.output


def test_a_box_a_reviewer_removed_is_in_no_pulled_label(tmp_path: Path) -> None:
    """``remove_box`` (session 55): the false detection a reviewer took out is in neither
    pull's labels, and the model's other boxes are pulled exactly as it drew them (the
    workaround before it, false_reject then redraw, lost them)."""
    srv, stop = start_server(keyed(store_pass_rate=1.0))
    try:
        with srv.client("admin") as c:
            c.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                              "default_min_score": 0.3})
        with srv.client("line") as c:
            r = c.post("/v1/inspect", params={"recipe": "strict"},
                       content=(PAIR / "00041000_test.jpg").read_bytes(),
                       headers={"content-type": "image/jpeg"})
            doc = r.json()
            assert r.status_code == 200 and doc["stored"] and len(doc["defects"]) >= 2, r.text
        model = [(d["label"], tuple(d["box"])) for d in doc["defects"]]
        with srv.client("reviewer") as c:
            r = c.post(f"/v1/inspections/{doc['id']}/reviews",
                       json={"action": "remove_box", "index": 0})
            assert r.status_code == 200, r.text
        got = {}
        for how in ("server", "store"):
            if how == "server":
                pull_from_server(srv.url, tmp_path / how, key="reviewer-secret")
            else:
                pull_from_store(srv.app.state.store, tmp_path / how)
            assert validate_dir(tmp_path / how) == []
            [item] = read_dataset(tmp_path / how).images
            got[how] = [(b.label, tuple(pytest.approx(v, abs=0.01) for v in b.xyxy()))
                        for b in item.boxes]
    finally:
        stop()
    assert got["server"] == got["store"] == model[1:]
