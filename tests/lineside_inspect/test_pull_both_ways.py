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
