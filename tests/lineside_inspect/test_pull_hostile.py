"""``lineside data pull URL`` treats what another server sends as input: an inspection id
becomes a file name, so one that is not an inspection id must not write anywhere."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lineside_inspect.errors import ConfigError, DatasetError
from lineside_inspect.store.pull import pull_from_server

from .conftest import numbered


def _item(iid: str) -> dict[str, object]:
    return {"id": iid, "created_at": "2026-12-01T00:00:00+00:00", "verdict": "fail",
            "reasons": [], "defects": [], "recipe": {"name": "r", "version": "1"},
            "model": {"name": "m", "version": "1", "sha256": "0" * 64}, "camera_id": None,
            "part_id": None, "timings_ms": {"decode": 0, "preprocess": 0, "infer": 0,
                                            "postprocess": 0, "total": 0},
            "reference": None, "stored": True, "box_id": "b", "class_names": ["open"],
            "width": 8, "height": 8, "has_image": True, "review_state": "confirmed",
            "reviews": []}


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A server that lists one inspection whose id climbs out of the pull's folder."""
    evil = "../../../../" + str(tmp_path / "escaped").lstrip("/")
    srv = _Scripted(lambda o: [_item(evil)] if o == 0 else [],
                    lambda _: b"\xff\xd8 not really an image", total=1)
    yield srv.url, srv.asked
    srv.close()


def test_an_id_that_is_not_an_inspection_id_is_refused(hostile, tmp_path: Path) -> None:
    url, asked = hostile
    with pytest.raises(ConfigError, match="not a Lineside one"):
        pull_from_server(url, tmp_path / "pulled")
    assert not (tmp_path / "escaped.jpg").exists()
    assert not any("/image" in p for p in asked)  # refused before fetching anything by it


# camera ids an older server took (only length and control characters were checked)
BAD_CAMERAS = ["../escaped", "a/b", "/abs/cam", "..", "cam\\x"]


def test_a_stored_camera_id_that_is_not_a_name_does_not_sink_the_pull(
        launch, image_bytes: bytes, tmp_path: Path) -> None:
    """An older store may hold a camera id that is not a name: each such inspection goes
    in a folder of its own inside images/ and the pull goes on (it failed as a whole with
    "image file_name '../<id>.jpg' leaves the dataset's images/ folder")."""
    from sqlalchemy.orm import Session

    from lineside_inspect.dataset import read_dataset, validate_dir
    from lineside_inspect.store.models import InspectionRow

    srv = launch(store_pass_rate=1.0)
    ids = []
    with srv.client("line") as c:
        for _ in range(len(BAD_CAMERAS) + 1):
            r = c.post("/v1/inspect", params={"camera_id": "cam1"},
                       content=numbered(image_bytes, len(ids)), headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["stored"], r.text
            ids.append(r.json()["id"])
    store = srv.app.state.store
    store.flush()  # the journal applied: the rows are in the database
    with Session(store.engine) as s, s.begin():  # as an older server stored them
        for iid, camera in zip(ids, BAD_CAMERAS, strict=False):
            row = s.get(InspectionRow, iid)
            assert row is not None
            row.camera_id = camera
    with srv.client("reviewer") as c:
        for iid in ids:
            r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "false_reject"})
            assert r.status_code == 200, r.text

    def check(dst: Path) -> None:
        assert validate_dir(dst) == []
        names = sorted(r.file_name for r in read_dataset(dst).images)
        assert len(names) == len(ids)
        folders = {n.split("/")[0] for n in names}
        assert "cam1" in folders and len(folders) == len(BAD_CAMERAS) + 1  # one each
        for n in names:
            folder, file = n.split("/")
            assert file.split(".")[0] in ids and (folder == "cam1" or folder.startswith("camera-"))
        images = (dst / "images").resolve()
        assert all(p.resolve().is_relative_to(images) for p in (dst / "images").rglob("*"))

    from lineside_inspect.store.pull import pull_from_store

    pull_from_server(srv.url, tmp_path / "served", key="reviewer-secret")
    check(tmp_path / "served")
    pull_from_store(store, tmp_path / "stored")
    check(tmp_path / "stored")
    assert not (tmp_path / "escaped").exists() and not Path("/abs/cam").exists()



class _Scripted:
    """A server answering the list and images as a test says (``page(offset)`` -> items,
    ``image(id)`` -> bytes), on loopback."""

    def __init__(self, page: object, image: object, total: int | Callable[[], int],
                 regions: bytes | None = None) -> None:
        outer = self

        self.asked: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.asked.append(self.path)
                if self.path.startswith("/v1/recipes/") and regions is None:
                    # a recipe's regions (session 56): none, as a release before the route
                    self.send_error(404)
                    return
                if self.path.startswith("/v1/recipes/"):
                    data, ctype = regions or b"", "application/json"
                elif self.path.startswith("/v1/inspections?"):
                    offset = int(self.path.split("offset=")[1].split("&")[0])
                    listed = page(offset)  # type: ignore[operator]
                    # (a dict: the page's fields, e.g. items and left_out)
                    fields = listed if isinstance(listed, dict) else {"items": listed}
                    data = json.dumps({"total": total() if callable(total) else total,
                                       "limit": 500, "offset": offset, **fields}).encode()
                    ctype = "application/json"
                else:
                    # "ID/image" or "ID/reference"
                    data, ctype = image("/".join(self.path.split("/")[3:])), "image/png"  # type: ignore[operator]
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{outer.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _png(width: int, height: int, tag: str = "") -> bytes:
    """A black image; with ``tag`` its first pixels are its sha256's bytes: one picture per
    tag (`data pull` pulls byte-identical frames once, session 52)."""
    import hashlib

    import numpy as np

    from lineside_inspect.opencv import cv2

    image = np.zeros((height, width, 3), np.uint8)
    if tag:
        flat = image.reshape(-1)
        stamp = np.frombuffer(hashlib.sha256(tag.encode()).digest(), np.uint8)
        flat[:min(len(flat), len(stamp))] = stamp[:len(flat)]
    return bytes(cv2.imencode(".png", image)[1])


def _ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


def test_a_pull_takes_each_inspection_once_when_pages_shift(tmp_path: Path) -> None:
    """A review made during a pull moved items onto the next page, and the written set
    listed them twice: nothing was written (data pull review, session 32)."""
    from lineside_inspect.dataset import validate_dir

    ids = _ids(3)
    pages = {0: [_item(i) for i in ids[:2]], 2: [_item(i) for i in ids[1:]]}  # ids[1] again
    srv = _Scripted(lambda o: pages.get(o, []), lambda path: _png(8, 8, path), total=3)
    try:
        ds = pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert sorted(r.file_name.split("/")[-1][:32] for r in ds.images) == ids
    assert validate_dir(tmp_path / "pulled") == []
    assert not list(tmp_path.glob(".pulled.pull.w*"))  # its staging folder is gone


def test_a_server_of_a_release_before_until_is_paged_by_offset(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages start at the oldest time listed (``until``); a server of a release before
    ``/v1/inspections`` took it ignores it, and its pages would never move on: such a
    server is paged by offset, as it was."""
    from lineside_inspect.store import pull

    ids = _ids(5)  # newest first, a second apart
    items = [{**_item(i), "created_at": f"2026-12-01T00:00:{59 - n:02d}+00:00"}
             for n, i in enumerate(ids)]
    monkeypatch.setattr(pull, "PAGE", 2)
    srv = _Scripted(lambda o: items[o:o + 2], lambda path: _png(8, 8, path), total=5)
    try:
        ds = pull_from_server(srv.url, tmp_path / "pulled")
        # nor part_id (session 48): every part's inspections were pulled as one part's
        with pytest.raises(ConfigError, match=r"asked for part 'SN 1', the server listed "
                           rf"inspection {ids[0]} of another part: it does not filter by "):
            pull_from_server(srv.url, tmp_path / "one-part", part_id="SN 1")
        # nor recipe (session 55): a box's single-image fails were pulled with its
        # reference pairs, which the reference training config then refused
        with pytest.raises(ConfigError, match=r"asked for recipe 'ref', the server listed "
                           rf"inspection {ids[0]} of recipe 'r': it does not filter by "
                           "recipe; pull without --recipe"):
            pull_from_server(srv.url, tmp_path / "one-recipe", recipes=["ref"])
    finally:
        srv.close()
    assert sorted(r.file_name.split("/")[-1][:32] for r in ds.images) == ids
    assert any("until=" in p for p in srv.asked)  # it was asked first
    assert "part_id=SN+1" in srv.asked[-2] and not (tmp_path / "one-part").exists()
    assert "recipe=ref" in srv.asked[-1] and not (tmp_path / "one-recipe").exists()


@pytest.mark.parametrize(("page", "image", "words"), [
    (lambda o: [{**_item(i), "has_image": False} for i in _ids(500, o)], lambda _: b"",
     "the server lists over"),
])
def test_what_a_hostile_server_sends_is_bounded_and_checked(
        tmp_path: Path, page: object, image: object, words: str) -> None:
    """A list that never ended looped for ever, and images that are none or not the
    size their record says made a set `data validate` refused (data pull review)."""
    srv = _Scripted(page, image, total=1)
    try:
        with pytest.raises(ConfigError, match=words):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".pulled.pull.w*"))


@pytest.mark.parametrize("apart", [0, 1], ids=["one time", "a second apart"])
def test_a_server_sending_one_page_again_and_again_is_stopped(tmp_path: Path,
                                                              apart: int) -> None:
    """A server that sends the same page whatever it is asked (it ignores offset and
    until, or a cache keyed by path answers) was asked for the next page for ever: the
    only bound was twice the total it claims (a billion here), nothing new pulled."""
    lists: list[int] = []
    items = [{**_item(i), "created_at": f"2026-12-01T00:00:{59 - n * apart:02d}+00:00"}
             for n, i in enumerate(_ids(3))]

    def page(offset: int) -> list[dict[str, object]]:
        lists.append(offset)
        return items if len(lists) < 30 else []  # (without the check: ends, "pulled")

    srv = _Scripted(page, lambda path: _png(8, 8, path), total=10**9)
    try:
        with pytest.raises(ConfigError, match="sent again a page it had sent"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert len(lists) == 2 + 2 * apart  # (apart: twice more, by offset from the start)
    assert len([p for p in srv.asked if p.endswith("/image")]) == 3  # each image once
    assert not (tmp_path / "pulled").exists() and not list(tmp_path.glob(".pulled.pull.w*"))


def test_a_server_before_until_gaining_rows_mid_pull_is_pulled_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paged by offset (a release before ``until``), rows added at the top meanwhile send
    rows listed before again: a whole page of them stopped the pull as "sent again" (the
    check against a server that ignores offset, session 39). Carried on while the total
    grew by as many; the rows there at the start are each pulled once."""
    from lineside_inspect.store import pull

    ids = _ids(5)  # newest first, a second apart
    items = [{**_item(i), "created_at": f"2026-12-01T00:00:{59 - n:02d}+00:00"}
             for n, i in enumerate(ids)]
    added = [{**_item(i), "created_at": f"2026-12-01T00:01:{9 - n:02d}+00:00"}
             for n, i in enumerate(_ids(4, start=5))]
    monkeypatch.setattr(pull, "PAGE", 2)
    lists: list[int] = []

    def page(offset: int) -> list[dict[str, object]]:
        lists.append(offset)
        if len(lists) == 6:  # by offset (after the until pages), past its first two pages
            items[:0] = added
        return items[offset:offset + 2]

    srv = _Scripted(page, lambda path: _png(8, 8, path), total=lambda: len(items))
    try:
        ds = pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert sorted(r.file_name.split("/")[-1][:32] for r in ds.images) == ids
    assert lists[3:] == [0, 2, 4, 6, 8, 9]  # 4 and 6: rows listed before (4 added)
    assert len([p for p in srv.asked if p.endswith("/image")]) == 5  # each image once


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59.999999+00:00",
                                  "0001-01-01T00:00:00+05:00"])
def test_an_inspection_dated_out_of_range_in_utc_is_one_line(tmp_path: Path,
                                                             when: str) -> None:
    """The next page is asked for up to just past the oldest time listed, in UTC: a date
    with no such time was an OverflowError traceback ("date value out of range")."""
    items = [{**_item(i), "created_at": when} for i in _ids(2)]
    srv = _Scripted(lambda o: items if o == 0 else [], lambda path: _png(8, 8, path), total=2)
    try:
        with pytest.raises(ConfigError, match=f"is dated {when[:4]}.*out of range in UTC"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()


def test_an_inspection_whose_image_is_broken_is_left_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hub stores what its boxes send: one box's JPEG with no image data (its header
    alone) stopped every `data pull` from the hub for good (review, session 34). An image
    or a golden image that does not decode, or not at the size its record says, leaves
    its inspection out, named in a WARNING; the pull goes on."""
    from lineside_inspect.dataset import validate_dir

    ids = _ids(5)
    with_golden = {**_item(ids[4]), "reference": {"name": None, "sha256": "0" * 64,
                                                   "has_image": True}}
    images = {f"{ids[0]}/image": _png(8, 8, "0"), f"{ids[1]}/image": b"\x89PNG not",
              f"{ids[2]}/image": _png(10, 10), f"{ids[3]}/image": _png(8, 8, "3"),
              f"{ids[4]}/image": _png(8, 8, "4"), f"{ids[4]}/reference": b"\xff\xd8\xff\xd9"}
    srv = _Scripted(lambda o: [*map(_item, ids[:4]), with_golden] if o == 0 else [],
                    lambda path: images[path], total=5)
    try:
        with caplog.at_level("WARNING", logger="lineside"):
            ds = pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert sorted(r.file_name.split("/")[-1][:32] for r in ds.images) == [ids[0], ids[3]]
    assert validate_dir(tmp_path / "pulled") == []
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "3 inspection(s) left out" in said
    assert f"{ids[1]}: its image: " in said and f"{ids[2]}: its image is 10x10" in said
    assert f"{ids[4]}: its golden image: " in said


def test_a_stored_shift_alignment_could_not_have_found_leaves_its_pair_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hub keeps the shift a box sent: one of a million px (or past align_reference's 16)
    is no alignment's, and moving the frame by it pulled its golden as the frame. Left out,
    named; a pair with a shift alignment finds is pulled moved by it."""
    import hashlib

    from lineside_inspect.dataset import read_dataset, validate_dir

    ids = _ids(3)
    golden = _png(64, 64)

    def paired(iid: str, shift: list[float]) -> dict[str, object]:
        return {**_item(iid), "width": 64, "height": 64,
                "defects": [{"label": "open", "score": 0.9, "box": [20.0, 20.0, 30.0, 30.0]}],
                "reference": {"name": None, "sha256": hashlib.sha256(golden).hexdigest(),
                              "shift": shift, "has_image": True}}

    items = [paired(ids[0], [1e6, 0.0]), paired(ids[1], [0.0, -16.5]), paired(ids[2], [3.0, -2.0])]
    srv = _Scripted(lambda o: items if o == 0 else [],
                    lambda path: golden if path.endswith("/reference") else _png(64, 64), total=3)
    try:
        with caplog.at_level("WARNING", logger="lineside"):
            ds = pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert validate_dir(tmp_path / "pulled") == []
    [pulled] = [r for r in read_dataset(tmp_path / "pulled").images if r.reference]
    assert pulled.file_name.endswith(f"{ids[2]}.png") and pulled.aligned == (3.0, -2.0)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in pulled.boxes] == [(17.0, 22.0, 27.0, 32.0)]
    assert len(ds.images) == 2  # and its golden
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "2 inspection(s) left out" in said
    assert (f"{ids[0]}: its stored alignment shift [1000000.0, 0.0] is beyond "
            "align_reference's 16 px") in said and f"{ids[1]}: its stored alignment shift" in said


def test_an_image_over_the_bound_is_not_read_whole(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lineside_inspect.store import pull

    monkeypatch.setattr(pull, "MAX_PULL_IMAGE_BYTES", 1000)
    srv = _Scripted(lambda o: [_item(i) for i in _ids(1)] if o == 0 else [],
                    lambda _: b"\x89PNG" + bytes(5000), total=1)
    try:
        with pytest.raises(ConfigError, match="the answer is over 1000 bytes"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()


def test_the_destination_is_refused_before_any_download(tmp_path: Path) -> None:
    """A pull into a folder it may not replace failed only after every download."""
    asked: list[str] = []
    (tmp_path / "pulled").mkdir()
    (tmp_path / "pulled" / "notes.txt").write_text("mine")

    def page(offset: int) -> list[dict[str, object]]:
        asked.append("list")
        return []

    srv = _Scripted(page, lambda _: b"", total=0)
    try:
        with pytest.raises(Exception, match="already exists"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert asked == [] and (tmp_path / "pulled" / "notes.txt").read_text() == "mine"


def test_boxes_are_clipped_to_the_image_and_empty_ones_left_out(tmp_path: Path) -> None:
    """A detector's box clipped at the edge has no width (x1 == x2) and a server may round
    a pixel out: one such confirmed box refused the whole pull, another passed the pull
    and then failed `data validate` (review of the pull fixes, session 32)."""
    from lineside_inspect.dataset import read_dataset, validate_dir

    item = {**_item(_ids(1)[0]), "defects": [
        {"label": "open", "score": 0.9, "box": [8.0, 1.0, 8.0, 5.0]},
        {"label": "open", "score": 0.9, "box": [0.0, 0.0, 8.9, 8.0]}]}
    srv = _Scripted(lambda o: [item] if o == 0 else [], lambda path: _png(8, 8, path), total=1)
    try:
        pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert validate_dir(tmp_path / "pulled") == []
    [image] = read_dataset(tmp_path / "pulled").images
    assert [(b.x1, b.y1, b.x2, b.y2) for b in image.boxes] == [(0.0, 0.0, 8.0, 8.0)]


def test_only_a_killed_pulls_staging_is_removed(tmp_path: Path) -> None:
    """A second pull into the same folder removed the first's staging while it ran, and
    the cleanup's glob took look-alike folders (another dataset's set-aside copy, a
    folder named .ds1.pull-running) (review of the pull fixes, session 32)."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    kept = [f".pulled.pull.w{os.getpid()}.abcd1234",  # a running pull's (this process)
            ".pulled1.pull.w1.abcd1234", ".pulled.pull-requests",
            ".pulled.pull.old.w999.abcd1234"]
    gone = f".pulled.pull.w{dead}.abcd1234"
    for name in (*kept, gone):
        (tmp_path / name).mkdir()
    srv = _Scripted(lambda o: [_item(i) for i in _ids(1)] if o == 0 else [],
                    lambda path: _png(8, 8, path), total=1)
    try:
        pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert not (tmp_path / gone).exists()
    assert all((tmp_path / name).is_dir() for name in kept)


@pytest.mark.parametrize("through", ["server", "store"])
def test_a_row_removed_from_a_page_already_read_costs_no_later_row(
        launch, image_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        through: str) -> None:
    """The pull paged by offset: retention removing a row of a page already read (the
    quota takes passes' images first, wherever they are in the list) moved every later
    row up one, and the one crossing into the page read next was never pulled. Pages
    start at the oldest time listed now."""
    from sqlalchemy.orm import Session

    from lineside_inspect.store import pull
    from lineside_inspect.store.models import InspectionRow

    srv = launch(store_pass_rate=1.0)
    ids = []
    with srv.client("line") as c, srv.client("reviewer") as r:
        for n in range(6):
            got = c.post("/v1/inspect", params={"camera_id": "cam1"},
                         content=numbered(image_bytes, n), headers={"content-type": "image/jpeg"})
            assert got.status_code == 200 and got.json()["stored"], got.text
            ids.append(got.json()["id"])
        srv.app.state.store.flush()
        for iid in ids:
            assert r.post(f"/v1/inspections/{iid}/reviews",
                          json={"action": "false_reject"}).status_code == 200
    store = srv.app.state.store
    newest_first = ids[::-1]
    monkeypatch.setattr(pull, "PAGE", 2)
    real_query, real_page = store.query, pull._page
    pages: list[int] = []

    def remove_one_read() -> None:  # as retention does, once the first page was read
        pages.append(1)
        if len(pages) == 2:
            with Session(store.engine) as s, s.begin():
                row = s.get(InspectionRow, newest_first[0])
                assert row is not None
                store._delete(s, row, None, [])

    def query(*args: object, **kwargs: object) -> object:
        remove_one_read()
        return real_query(*args, **kwargs)

    def page(*args: object) -> object:
        remove_one_read()
        return real_page(*args)  # type: ignore[arg-type]

    if through == "store":
        monkeypatch.setattr(store, "query", query)
        ds = pull.pull_from_store(store, tmp_path / "pulled")
    else:
        monkeypatch.setattr(pull, "_page", page)
        ds = pull.pull_from_server(srv.url, tmp_path / "pulled", key="reviewer-secret")
    pulled = {Path(r.file_name).stem for r in ds.images}
    # every row still there; the one removed is in only if its image was read first
    assert set(newest_first[1:]) <= pulled <= set(newest_first), pulled


def test_a_short_page_of_rows_left_out_ends_the_list(tmp_path: Path) -> None:
    """A page of no items and fewer rows left out than its limit is the list's last: a
    server saying `left_out: 1` page after page (its total a trillion) was asked again and
    again, bounded only by the total it claimed (attacker's pass, session 40)."""
    calls: list[int] = []

    def page(offset: int) -> dict[str, object]:
        calls.append(offset)  # 20 pages at most here, then an empty list: its end
        return {"items": [], "left_out": 1 if len(calls) <= 20 else 0}

    srv = _Scripted(page, lambda _: b"", total=10**12)
    try:
        with pytest.raises((ConfigError, DatasetError)):  # nothing pulled
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert len(calls) == 1


def test_what_an_inspection_left_out_staged_is_not_kept_to_the_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Since the pull placed both ways' items alike (session 41) a server's golden was
    written to the staging folder as it came, before its item was checked, and an item
    left out (its image broken) left its golden there until the pull ended: a hostile
    server's goldens of items that never go in, 64 MB each, took the disk beside DST (the
    pull before kept none of them). What a left-out item staged goes with it; a golden
    another item uses stays. Measured as the server is asked for each next image."""
    import hashlib

    from lineside_inspect.dataset import read_dataset

    ids = _ids(6)
    goldens = {iid: _png(8 + i, 8) for i, iid in enumerate(ids)}  # each its own golden
    shared = _png(8, 8)  # the one golden of the last two: the first left out, the last kept
    goldens[ids[4]] = goldens[ids[5]] = shared

    def item(iid: str) -> dict[str, object]:
        return {**_item(iid), "width": 8 if iid in ids[4:] else 8 + ids.index(iid),
                "reference": {"name": None, "sha256": hashlib.sha256(goldens[iid]).hexdigest(),
                              "has_image": True}}

    staged: list[list[str]] = []  # the staging folder's files, as each image is asked for

    def answer(path: str) -> bytes:
        iid, what = path.split("/")
        if what == "reference":
            return goldens[iid]
        staged.append(sorted(p.name for p in tmp_path.glob(".pulled.pull.w*/**/*")
                             if p.is_file()))
        return _png(8, 8) if iid == ids[5] else b"\x89PNG not an image"  # (left out)

    srv = _Scripted(lambda o: [item(i) for i in ids] if o == 0 else [], answer, total=6)
    try:
        with caplog.at_level("WARNING", logger="lineside"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    assert staged == [[]] * 6  # nothing of the items before it, left out, was kept
    names = sorted(r.file_name for r in read_dataset(tmp_path / "pulled").images)
    assert names == [f"references/{hashlib.sha256(shared).hexdigest()}.png",
                     f"upload/{ids[5]}.png"]
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "5 inspection(s) left out" in said


def test_a_class_name_that_is_not_plain_text_leaves_its_inspection_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server's labels are input too: one with a newline went into the pulled set's
    classes (a model package refuses it, after training) and, since the pull names the
    labels of copies of a picture reviewed differently, forged a line of its log; one
    with U+202E the same (adversarial read, session 52). Each such inspection is left
    out, counted in one line; the rest is pulled."""
    import logging

    from lineside_inspect.dataset import read_dataset, validate_dir

    forged, reversed_, plain = _ids(3)
    label = "open\nWARNING:lineside.store:pull: all good"
    review = {"id": 1, "created_at": "2026-12-01T00:01:00+00:00", "reviewer": "qa",
              "action": "relabel", "note": "", "boxes": [{"label": label, "box": [1, 1, 5, 5]}]}
    items = [{**_item(forged), "class_names": ["open", label], "reviews": [review]},
             {**_item(reversed_), "class_names": ["open", "short\u202e"],
              "defects": [{"label": "short\u202e", "score": 0.9, "box": [1.0, 1.0, 5.0, 5.0]}]},
             {**_item(plain), "defects": [{"label": "open", "score": 0.9, "box": [1.0, 1.0, 5.0, 5.0]}]}]
    # the forged one a byte-identical copy of the plain one (its labels were named)
    srv = _Scripted(lambda o: items if o == 0 else [],
                    lambda path: _png(8, 8, "" if path.startswith((forged, plain)) else path),
                    total=3)
    try:
        with caplog.at_level(logging.INFO, "lineside.store"):
            pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    ds = read_dataset(tmp_path / "pulled")
    assert ds.categories == ["open"]
    assert [r.file_name.split("/")[-1][:32] for r in ds.images] == [plain]
    assert validate_dir(tmp_path / "pulled") == []
    assert not any("\n" in m or "\u202e" in m for m in caplog.messages), caplog.messages
    assert any(m.startswith("pull: 2 inspection(s) left out, a class name holds a control or "
                            "bidirectional character") and f"(e.g. inspection {forged})" in m
               for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("padding", [0, 8 << 20], ids=["as sent", "over the bound"])
def test_a_regions_answer_over_its_bound_leaves_the_frames_whole(
        tmp_path: Path, padding: int) -> None:
    """A recipe's regions answer is a few MB at most (a versions file's bound): a hostile
    server's 64 MB of polygons were parsed whole, a GB held (adversarial review, session
    56). Over 8 MB it is not read: the frames are pulled whole and said, the pull goes on."""
    import numpy as np

    from lineside_inspect.imageio import read_image
    from lineside_inspect.package import PAD_VALUE

    regions = json.dumps({"name": "r", "version": "1", "versions": {"1": {
        "roi": [[[0, 0], [4, 0], [4, 8], [0, 8]]]}}}).encode()
    srv = _Scripted(lambda o: [_item(_ids(1)[0])] if o == 0 else [],
                    lambda path: _png(8, 8), total=1, regions=b" " * padding + regions)
    try:
        ds = pull_from_server(srv.url, tmp_path / "pulled")
    finally:
        srv.close()
    [rec] = ds.images
    frame = read_image(tmp_path / "pulled" / "images" / rec.file_name)
    info = json.loads((tmp_path / "pulled" / "annotations.json").read_text())["info"]
    if padding:
        assert (frame == 0).all() and info["recipe_regions_unknown"] == {"r:1": [rec.file_name]}
    else:  # (the right half, which the roi never judged, painted)
        assert (frame[:, 4:] == PAD_VALUE).all() and (frame[:, :4] == 0).all()
        assert info["outside_recipe_regions"]["painted_out"] == [rec.file_name]
    assert np.asarray(frame).shape == (8, 8, 3)
