"""The review API on a real server: filters, pagination, reviews with an audit trail,
images, the dashboard figures, and pulling the reviewed set as a dataset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from lineside_inspect.dataset import read_dataset, validate_dir
from lineside_inspect.imageio import decode_image
from lineside_inspect.store.pull import pull_from_server

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "deeppcb-sample" / "images"
JPEG = {"content-type": "image/jpeg"}


def _code(r) -> str:
    return r.json()["error"]["code"]


def _inspect_some(srv, n: int = 6) -> list[dict]:
    files = sorted(SAMPLE.rglob("*.jpg"))[:n]
    docs = []
    with srv.client("line") as c:
        for i, f in enumerate(files):
            r = c.post("/v1/inspect", content=f.read_bytes(), headers=JPEG,
                       params={"recipe": "strict", "camera_id": f"cam{i % 2}", "part_id": f.stem})
            assert r.status_code == 200 and r.json()["stored"] is True
            docs.append(r.json())
    return docs


def test_review_flow_and_pull(launch, tmp_path: Path) -> None:
    srv = launch(store_pass_rate=1.0)
    with srv.client("admin") as admin:  # every defect fails: plenty to review
        admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                              "default_min_score": 0.05})
    docs = _inspect_some(srv)
    fails = [d for d in docs if d["verdict"] == "fail"]
    assert len(fails) >= 2
    with srv.client("reviewer") as c:
        page = c.get("/v1/inspections", params={"verdict": "fail", "limit": 2}).json()
        assert page["total"] == len(fails) and len(page["items"]) == 2
        page2 = c.get("/v1/inspections", params={"verdict": "fail", "limit": 2, "offset": 2}).json()
        assert not {i["id"] for i in page["items"]} & {i["id"] for i in page2["items"]}
        assert c.get("/v1/inspections", params={"camera_id": "cam1"}).json()["total"] == \
            sum(1 for d in docs if d["camera_id"] == "cam1")
        label = fails[0]["defects"][0]["label"]
        assert c.get("/v1/inspections", params={"label": label}).json()["total"] >= 1
        assert c.get("/v1/inspections", params={"verdict": "maybe"}).status_code == 422
        # a parameter the list does not take (a reviewer's guess) listed every inspection
        # as if it filtered them: named, with what the list takes (QA review, session 47)
        r = c.get("/v1/inspections", params={"verdict": "fail", "status": "fail",
                                             "reviewed": "false"})
        msg = r.json()["error"]["message"] if r.status_code == 422 else r.text
        assert r.status_code == 422 and msg.startswith("query: reviewed, status: not a "
                                                       "parameter of this list, which takes "
                                                       "verdict, camera_id,"), msg
        assert "unreviewed fails: verdict=fail&review_state=unreviewed" in msg, msg
        # with the one each guess most likely meant (new-user review, session 47)
        assert "(reviewed: review_state?; status: verdict?; unreviewed fails: " in msg, msg
        for guess, meant in (("camera", "camera_id"), ("from", "since"), ("Label", "label")):
            msg = c.get("/v1/inspections", params={guess: "x"}).json()["error"]["message"]
            assert f"({guess}: {meant}?; unreviewed fails: " in msg, msg
        # one part's inspections, a QA reviewer's first look-up, had no filter (session 47):
        # exactly that part id; a guess at its name says part_id
        part = docs[1]["part_id"]
        page = c.get("/v1/inspections", params={"part_id": part}).json()
        assert page["total"] == 1 and page["items"][0]["id"] == docs[1]["id"], page
        assert c.get("/v1/inspections", params={"part_id": part[:-1]}).json()["total"] == 0
        for guess in ("part", "serial", "SN"):
            msg = c.get("/v1/inspections", params={guess: part}).json()["error"]["message"]
            assert f"({guess}: part_id?; unreviewed fails: " in msg, msg
        for bad, why in (("x" * 257, "at most 256 characters"), ("SN\u202e1", "bidirectional")):
            r = c.get("/v1/inspections", params={"part_id": bad})
            assert r.status_code == 422 and why in r.text and "part_id" in r.text, r.text
        assert c.get("/v1/inspections", params={"verdict": "fail", "review_state": "unreviewed",
                                                "limit": 1}).json()["total"] == len(fails)
        # a time that cannot be taken to UTC (before year 1 there) was an OverflowError: 500
        for key, when in (("since", "0001-01-01T00:00:00+14:00"), ("until", "9999-12-31T23:59:59-14:00")):
            r = c.get("/v1/inspections", params={key: when})
            assert r.status_code == 422 and f"query.{key}" in r.text, r.text
            # one that is not a time at all answered pydantic's "input is too short": named,
            # with what the parameter takes (new-user review, session 47)
            r = c.get("/v1/inspections", params={key: "yesterday"})
            err = r.json()["error"]
            assert r.status_code == 422 and err["code"] == "invalid_request", r.text
            assert err["message"].startswith(f"query.{key}: not a time: this parameter takes "
                                             "an ISO 8601 time, such as 2026-12-07T08:00:00Z"), err

        a, b = fails[0]["id"], fails[1]["id"]
        r = c.post(f"/v1/inspections/{a}/reviews", json={"action": "false_reject", "note": "dust"})
        assert r.status_code == 200 and r.json()["review_state"] == "corrected"
        box = {"label": "short", "box": [10, 10, 40, 40], "score": 0.5}  # as a defect's, copied
        r = c.post(f"/v1/inspections/{b}/reviews", json={"action": "missed_defect", "boxes": [box]})
        assert r.status_code == 200
        r = c.post(f"/v1/inspections/{b}/reviews", json={"action": "relabel", "index": 0,
                                                         "label": "spur"})
        assert r.status_code == 200
        trail = r.json()["reviews"]
        assert [t["action"] for t in trail] == ["missed_defect", "relabel"]
        assert all(t["reviewer"] == "reviewer" for t in trail)
        assert trail[-1]["boxes"][0]["label"] == "spur"
        assert "score" not in trail[0]["boxes"][0]  # a reviewer's box keeps no score
        outside = {"label": "short", "box": [5, 5, 900, 9]}
        bad = c.post(f"/v1/inspections/{b}/reviews",
                     json={"action": "missed_defect", "boxes": [outside]})
        assert bad.status_code == 422 and "inside the 640x640" in bad.json()["error"]["message"]
        assert bad.json()["error"]["code"] == "invalid_review"
        assert c.post("/v1/inspections/nope/reviews", json={"action": "confirm"}).status_code == 404
        # a misspelt field is refused, not taken as absent: seen_review would skip the
        # conflict check; a NUL in a note is refused before the database sees it
        typo = c.post(f"/v1/inspections/{b}/reviews", json={"action": "confirm", "seen_review": 0})
        assert typo.status_code == 422 and "seen_review" in typo.text
        assert c.post(f"/v1/inspections/{b}/reviews",
                      json={"action": "confirm", "note": "x\u0000y"}).status_code == 422
        empty = c.post(f"/v1/inspections/{a}/reviews", json={"action": "relabel", "index": 0,
                                                             "label": "spur"})
        assert empty.status_code == 422 and "no boxes to relabel" in empty.json()["error"]["message"]
        for label in ("spur\n", "sp\x00ur"):  # a class label is one line of plain text
            r = c.post(f"/v1/inspections/{b}/reviews",
                       json={"action": "relabel", "index": 0, "label": label})
            assert r.status_code == 422 and "control character" in r.text, r.text
        # a box number is a JSON integer: true, 1.0 and "1" were taken as box 1
        for index in (True, 1.0, "1", -1):
            r = c.post(f"/v1/inspections/{b}/reviews",
                       json={"action": "relabel", "index": index, "label": "spur"})
            assert r.status_code == 422 and "index" in r.text, (index, r.text)
        r = c.post(f"/v1/inspections/{b}/reviews", json={"action": "confirm", "seen_reviews": True})
        assert r.status_code == 422 and "seen_reviews" in r.text, r.text
        assert len(c.get(f"/v1/inspections/{b}").json()["reviews"]) == 2  # none of these saved
        # control characters in a URL (a NUL was a 500 on PostgreSQL) are refused up front
        for path, params in ((f"/v1/inspections/{a}%00", None),
                             ("/v1/inspections", {"camera_id": "cam\x00"}),
                             ("/v1/stats", {"recipe": "r\r\nX-Injected: 1"})):
            r = c.get(path, params=params)
            assert r.status_code == 400 and _code(r) == "invalid_url", (path, r.text)

        original = c.get(f"/v1/inspections/{a}/image")
        assert original.content == (next(p for p in SAMPLE.rglob("*.jpg")
                                         if p.stem == fails[0]["part_id"])).read_bytes()
        assert decode_image(c.get(f"/v1/inspections/{b}/annotated").content).shape == (640, 640, 3)
        # a second reviewer agreeing: still one false reject (it counted reviews: 2)
        assert c.post(f"/v1/inspections/{a}/reviews",
                      json={"action": "false_reject"}).status_code == 200
        stats = c.get("/v1/stats").json()
        assert stats["false_rejects_confirmed"] == 1 and stats["reviewed_fails"] == 2
        assert sum(v["fail"] + v["pass"] for v in stats["verdicts_per_hour"].values()) == len(docs)
    with srv.client("line") as c:  # line keys cannot read or review
        frame = next(SAMPLE.rglob("*.jpg")).read_bytes()
        nul = c.post("/v1/inspect", content=frame, headers=JPEG, params={"part_id": "a\x00b"})
        assert nul.status_code == 400 and _code(nul) == "invalid_url"
        # b's part again at another station (a re-inspection); a part id kept with its
        # surrounding spaces (a fixed-width reader pads its serials): kept as sent
        part = fails[1]["part_id"]
        for camera, pid in (("cam7", part), ("cam7", " P-9 ")):
            again = c.post("/v1/inspect", headers=JPEG, params={
                "recipe": "strict", "camera_id": camera, "part_id": pid},
                content=next(p for p in SAMPLE.rglob("*.jpg") if p.stem == part).read_bytes())
            assert again.status_code == 200 and again.json()["part_id"] == pid, again.text
        assert c.get("/v1/inspections").status_code == 403
        assert c.post(f"/v1/inspections/{a}/reviews", json={"action": "confirm"}).status_code == 403

    ds = pull_from_server(srv.url, tmp_path / "pulled", key="reviewer-secret")
    assert validate_dir(tmp_path / "pulled") == []
    by_id = {Path(r.file_name).stem: r for r in read_dataset(tmp_path / "pulled").images}
    assert set(by_id) == {a, b} and len(ds.images) == 2
    assert by_id[a].is_good  # the false reject became a good image
    assert [(x.label, x.xyxy()) for x in by_id[b].boxes][-1] == ("short", (10.0, 10.0, 40.0, 40.0))

    # how one part fared across stations and re-inspections: /v1/stats and the pull took
    # no part filter (session 48); held to the list's rules, one definition
    with srv.client("reviewer") as c:
        doc = c.get("/v1/stats", params={"part_id": part}).json()
        assert doc["part_id"] == part and sum(h["inspections"] for h in doc["hourly"]) == 2, doc
        assert sorted(st["camera_id"] for st in doc["stations"]) == \
            sorted([fails[1]["camera_id"], "cam7"]), doc["stations"]
        assert (doc["reviewed_fails"], doc["false_rejects_confirmed"]) == (1, 0)  # b's, not a's
        rows = c.get("/v1/stats.csv", params={"part_id": part}).text.splitlines()
        assert rows[0].startswith("start_utc,end_utc,camera_id,recipe,part_id,"), rows[0]
        for bad, why in (("x" * 257, "at most 256 characters"), ("SN\u202e1", "bidirectional")):
            for path in ("/v1/stats", "/v1/stats.csv"):
                r = c.get(path, params={"part_id": bad})
                assert r.status_code == 422 and why in r.text and "part_id" in r.text, r.text
        # a guess at the name was ignored: the whole line's figures, read as the part's
        # (session 48); refused as the list refuses it, naming what the route takes
        for path, takes in (("/v1/stats", "hours, camera_id, recipe, part_id, site, line, box_id"),
                            ("/v1/stats.csv", "table, hours, camera_id, recipe, part_id")):
            for guess, hint in (("part", "(part: part_id?)"), ("status", "")):
                r = c.get(path, params={guess: part, "hours": 24})
                msg = r.json()["error"]["message"]
                assert r.status_code == 422 and msg.startswith(f"query: {guess}: not a parameter of {path}, "
                                                                       f"which takes {takes}"), msg
                assert msg.endswith(hint or "box_id"), msg  # verdict is no figures' parameter
            # a name given twice: the last value alone was taken, B's figures read as A's
            # and B's (review, session 48); many unknown names: five named, the rest counted
            r = c.get(path, params=[("part_id", part), ("part_id", "other"), ("hours", 24)])
            assert r.status_code == 422 and r.json()["error"]["message"] == (
                f"query: part_id: given more than once; {path} takes one value of each "
                "parameter"), r.text
            r = c.get(path, params=[(f"x{i:04}", "1") for i in range(2000)] + [("", "1")])
            assert r.status_code == 422 and r.json()["error"]["message"].startswith(
                "query: '', x0000, x0001, x0002, x0003 (and 1996 more): not a parameter"), r.text
        r = c.get("/v1/inspections", params=[("verdict", "pass"), ("verdict", "fail")])
        assert r.status_code == 422 and "verdict: given more than once" in r.text, r.text
        # exactly as kept: the padded id with its spaces, not without (documented)
        for pid, n in ((" P-9 ", 1), ("P-9", 0)):
            assert c.get("/v1/inspections", params={"part_id": pid}).json()["total"] == n
            doc = c.get("/v1/stats", params={"part_id": pid}).json()
            assert sum(h["inspections"] for h in doc["hourly"]) == n, (pid, doc["hourly"])
    ds = pull_from_server(srv.url, tmp_path / "one-part", key="reviewer-secret", part_id=part)
    assert [Path(r.file_name).stem for r in ds.images] == [b]  # reviewed, of that part only


def test_remove_box_takes_out_one_false_detection_over_the_api(launch) -> None:
    """A failed inspection with a false detection beside real defects: only a false_reject
    then redrawing every real box got it out, the model's exact boxes lost (QA review,
    session 55). ``remove_box`` with an ``index`` drops that box; a bad index is a 422
    naming the range, and the last box is refused (use false_reject), nothing saved."""
    srv = launch(store_pass_rate=1.0)
    with srv.client("admin") as admin:
        admin.put("/v1/recipes/strict", json={"name": "strict", "model": "deeppcb",
                                              "default_min_score": 0.05})
    docs = _inspect_some(srv)
    doc = min((d for d in docs if d["verdict"] == "fail" and len(d["defects"]) >= 2),
              key=lambda d: len(d["defects"]))
    iid, model = doc["id"], [{"label": d["label"], "box": d["box"]} for d in doc["defects"]]
    url = f"/v1/inspections/{iid}/reviews"
    with srv.client("reviewer") as c:
        r = c.post(url, json={"action": "remove_box", "index": 1, "seen_reviews": 0,
                              "note": "glare"})
        assert r.status_code == 200, r.text
        assert r.json()["review_state"] == "corrected"
        [rev] = r.json()["reviews"]
        assert rev["action"] == "remove_box" and rev["note"] == "glare"
        assert rev["boxes"] == model[:1] + model[2:]  # the others exactly as the model drew them
        n = len(model) - 1
        for body in ({"index": n}, {"index": 10**6}, {}):
            r = c.post(url, json={"action": "remove_box", **body})
            err = r.json()["error"]
            assert r.status_code == 422 and err["code"] == "invalid_review", r.text
            assert err["message"].startswith(f"remove_box needs an index in 0..{n - 1} (the "
                                             f"inspection has {n} box(es))"), err
        for index in (-1, True, "0"):  # a box number is a JSON integer from 0
            r = c.post(url, json={"action": "remove_box", "index": index})
            assert r.status_code == 422 and "index" in r.text, (index, r.text)
        for _ in range(n - 1):
            assert c.post(url, json={"action": "remove_box", "index": 0}).status_code == 200
        r = c.post(url, json={"action": "remove_box", "index": 0})
        assert r.status_code == 422 and r.json()["error"]["message"].endswith(
            "with no box: use false_reject: the part has no defect"), r.text
        kept = c.get(f"/v1/inspections/{iid}").json()
        assert [x["action"] for x in kept["reviews"]] == ["remove_box"] * n  # no refusal saved
        assert kept["reviews"][-1]["boxes"] == model[-1:]
        audit = c.get("/v1/reviews").json()
        assert audit["total"] == n and {x["action"] for x in audit["items"]} == {"remove_box"}
        stats = c.get("/v1/stats").json()  # a defective part still: no false reject
        assert (stats["reviewed_fails"], stats["false_rejects_confirmed"]) == (1, 0), stats
        assert stats["quality"]["false_rejects"] == 0


def test_the_names_a_route_refuses_are_the_query_parameters_fastapi_reads() -> None:
    """``refuse_unknown`` reads a route's names from its signature, leaving out the request
    and the caller (``who``): they are exactly the query parameters FastAPI fills, so no
    injected dependency's name is listed as taken, nor let through as a query name
    (review, session 48: held; pinned for a route given another dependency later)."""
    from fastapi.dependencies.utils import get_dependant

    from lineside_inspect.server.query import taken
    from lineside_inspect.server.routes.inspections import list_inspections, stats
    from lineside_inspect.server.routes.page_data import stats_csv

    for endpoint in (list_inspections, stats, stats_csv):
        read = get_dependant(path="/x", call=endpoint).query_params
        assert taken(endpoint) == tuple(p.alias for p in read), endpoint.__name__


def hub_review_taken_down(box: Any, part: str) -> str:
    """An unreviewed fail of ``part`` on the in-process server ``box``, reviewed by the
    hub's qa (taken down, filed under the hub's name, as ``fleet/box/reviews.py`` does),
    then by the box's own reviewer: its id."""
    from lineside_inspect.fleet.protocol import ReviewEvent
    from lineside_inspect.fleet.review_merge import apply_review
    from lineside_inspect.store.models import HUB_BOX_ID

    from .test_ui_shift_review import _fail

    store = box.app.state.store
    short = {"label": "short", "score": 0.91, "box": [10.0, 20.0, 30.0, 40.0]}
    iid = _fail(store, part, ["short", "open"], [short])
    hub_said = ReviewEvent(seq=1, inspection_id=iid, created_at=datetime.now(UTC) - timedelta(seconds=20),
                           reviewer="qa", action="confirm", origin="hub",
                           boxes=[{"label": "short", "box": short["box"]}])
    assert apply_review(store, hub_said, box_id=HUB_BOX_ID) == "current"
    with box.client("reviewer") as c:
        r = c.post(f"/v1/inspections/{iid}/reviews", json={"action": "confirm"})
        assert r.status_code == 200, r.text
        assert [(v["reviewer"], v["origin"]) for v in r.json()["reviews"]] == [
            ("qa", "hub"), ("reviewer", "box")]
    return iid


def test_a_reviews_origin_says_the_hubs_review_from_the_boxs() -> None:
    """A review the fleet hub's qa made, which the box took down, read as the box's own
    "qa" in the part's audit trail: the answer did not say where a review came from
    (session 52). ``GET /v1/inspections/{id}`` (and a review's answer) now says each
    review's ``origin``; the list does not, as a data pull of an earlier release refuses
    a field it does not know."""
    from .conftest import keyed, start_server

    running, stop = start_server(keyed(store_pass_rate=1.0))
    try:
        iid = hub_review_taken_down(running, "FROMHUB")
        with running.client("reviewer") as c:
            detail = c.get(f"/v1/inspections/{iid}").json()
            assert [(v["reviewer"], v["origin"]) for v in detail["reviews"]] == [
                ("qa", "hub"), ("reviewer", "box")]
            listed = c.get("/v1/inspections", params={"part_id": "FROMHUB"}).json()["items"]
            assert [sorted(v) for v in listed[0]["reviews"]] == [
                ["action", "boxes", "created_at", "id", "note", "reviewer"]] * 2
    finally:
        stop()
