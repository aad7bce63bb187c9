"""The lifecycle over HTTP on a real server: golden sets from reviewed inspections, the
gate, activation refused on a failed gate unless forced (and the forced one recorded),
shadow mode with its disagreements queue, a promotion rolled back by its watch.

A worse candidate without training: the bundled package under another card whose
thresholds are 0.999 ("blind": it passes defective boards) or 0.02 ("jumpy": it fails good
ones). Same graph, other verdicts: the gate and admissions key on the version and graph.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MODEL, ROOT, SAMPLE, Running

DEFECTIVE = sorted((SAMPLE / "images").rglob("*_test.jpg"))
GOOD = sorted((SAMPLE / "images").rglob("*_temp.jpg"))


def variant(root: Path, version: str, threshold: float) -> Path:
    """models/deeppcb/1 under another card: every threshold ``threshold``."""
    dst = root / "deeppcb" / version
    shutil.copytree(MODEL, dst)
    card = json.loads((dst / "model.json").read_text())
    card["version"] = version
    card["thresholds"] = dict.fromkeys(card["thresholds"], threshold)
    card["default_recipe"]["min_score"] = dict.fromkeys(card["thresholds"], threshold)
    (dst / "model.json").write_text(json.dumps(card))
    return dst


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    variant(root, "blind", 0.999)
    variant(root, "jumpy", 0.02)
    return root


def server(launch: Callable[..., Running], variants: Path, **kw: Any) -> Running:
    return launch(model_roots=[str(ROOT / "models"), str(variants)], **kw)


def inspect(c: httpx.Client, files: list[Path], **params: Any) -> list[dict[str, Any]]:
    out = []
    for f in files:
        r = c.post("/v1/inspect", content=f.read_bytes(), params=params,
                   headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def load(c: httpx.Client, path: Path) -> None:
    r = c.post("/v1/models", json={"path": str(path), "activate": False})
    assert r.status_code == 200, r.text


def test_golden_gate_and_forced_activation(launch: Callable[..., Running], variants: Path) -> None:
    srv = server(launch, variants, store_pass_rate=1.0)
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        results = inspect(line, DEFECTIVE[:3] + GOOD[:3])
        for r, f in zip(results, DEFECTIVE[:3] + GOOD[:3], strict=True):
            action = "false_reject" if "_temp" in f.name and r["verdict"] == "fail" else "confirm"
            assert rev.post(f"/v1/inspections/{r['id']}/reviews", json={"action": action}).status_code == 200
        # golden sets from the store's reviewed inspections: admins make them
        assert rev.post("/v1/golden/line1", json={}).status_code == 403
        r = admin.post("/v1/golden/line1", json={"note": "shift 1"})
        assert r.status_code == 200, r.text
        golden = r.json()
        assert golden["version"] == 1 and len(golden["items"]) == 6
        assert sum(i["expected"] == "fail" for i in golden["items"]) == 3
        assert rev.get("/v1/golden").json()["items"][0]["versions"][0]["digest"] == golden["digest"]
        many = admin.post("/v1/golden/line1", json={"inspections": [r["id"] for r in results],
                                                    "limit": 2})
        assert many.status_code == 422 and "over the limit of 2" in many.json()["error"]["message"]
        bad = admin.post("/v1/golden/line1", json={"inspections": ["../../etc/passwd"]})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_config"
        unknown = admin.get("/v1/golden/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert admin.get("/v1/golden/bad%20name").status_code == 422
        assert admin.get("/v1/golden/bad%0Aname").status_code == 400  # invalid_url, before routes

        # a blind candidate fails the gate: more escapes than the active model
        load(admin, variants / "deeppcb" / "blind")
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "blind", "golden": "line1"})
        assert r.status_code == 200, r.text
        report = r.json()
        assert not report["passed"] and report["candidate"]["escapes"] == 3
        assert report["against"]["escapes"] == 0 and "escape" in report["reasons"][0]
        assert {d["expected"] for d in report["disagreements"]} == {"fail"}
        assert admin.get(f"/v1/gates/{report['id']}").json()["actor"] == "admin"

        # ... so it is not activated, not even by loading it with activate
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
        # the report and the recipe it failed under (session 43, fleet pass: several may
        # judge a version, and the refusal named the report only)
        assert (f"failed its gate (report {report['id']} under recipe {report['recipe']} on "
                "golden set line1:1: ") in r.json()["error"]["message"]
        r = admin.post("/v1/models", json={"path": str(variants / "deeppcb" / "blind")})
        assert r.status_code == 409 and "did not activate" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        assert inspect(line, DEFECTIVE[:1])[0]["model"]["version"] == "1"
        # force needs a reason; then it is recorded, who, when and why
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind", "force": True})
        assert r.status_code == 422 and "reason" in r.json()["error"]["message"]
        r = admin.post("/v1/models/deeppcb/activate",
                       json={"version": "blind", "force": True, "reason": "trial on line 2"})
        assert r.status_code == 200, r.text
        judged = inspect(line, DEFECTIVE[:1])[0]
        # the card's recipe followed the card: judged at blind's own thresholds, it passes
        assert (judged["model"]["version"], judged["verdict"]) == ("blind", "pass")
        assert admin.post("/v1/models/deeppcb/rollback").status_code == 200
        log = rev.get("/v1/audit", params={"model": "deeppcb"}).json()
        actions = [e["action"] for e in log["items"]]
        assert actions[:3] == ["rollback", "force_activate", "gate"]
        forced = log["items"][1]
        assert (forced["actor"], forced["reason"], forced["version"]) == ("admin", "trial on line 2", "blind")
        assert forced["details"]["gate_report_id"] == report["id"]
        assert line.get("/v1/audit").status_code == 403

        # the int8 twin passes its gate and is admitted by it (lineage on the box)
        load(admin, ROOT / "models" / "deeppcb" / "1-int8")
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "1-int8", "golden": "line1"})
        assert r.json()["passed"], r.json()
        assert admin.post("/v1/models/deeppcb/activate", json={"version": "1-int8"}).status_code == 200
        lineage = admin.get("/v1/models/deeppcb/lineage").json()
        latest = lineage["admissions"][0]
        assert latest["version"] == "1-int8" and not latest["forced"]
        assert latest["gate_report_id"] == r.json()["id"]
        assert latest["golden"] == {"name": "line1", "version": 1, "digest": golden["digest"]}
        assert lineage["admissions"][1]["forced"] and lineage["admissions"][1]["version"] == "blind"

        # a rollback does not bring back a version whose failed gate stands (lifecycle
        # review, session 32: a plain rollback ran no admission check)
        assert admin.post("/v1/models/deeppcb/activate", json={
            "version": "blind", "force": True, "reason": "trial again"}).status_code == 200
        assert admin.post("/v1/models/deeppcb/activate",
                          json={"version": "1-int8"}).status_code == 200
        r = admin.post("/v1/models/deeppcb/rollback")
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed", r.text
        assert "failed its gate" in r.json()["error"]["message"]
        # and one that names the active version it saw is refused once another is active
        r = admin.post("/v1/models/deeppcb/rollback", params={"from": "1"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "active_changed", r.text
        assert admin.get("/v1/models").json()[0]["active"] == "1-int8"
        assert admin.post("/v1/models/deeppcb/activate",
                          json={"version": ""}).status_code == 422  # not "the active one"
        # a promotion whose gate compared with a version another admin replaced meanwhile
        # is not activated (its watch would have gone back to the replaced one)
        from lineside_inspect.errors import ActiveChanged

        with pytest.raises(ActiveChanged, match="1-int8 was made active while 1 was gated "
                                                "against blind"):
            srv.app.state.lifecycle.activate("deeppcb", "1", actor="admin", action="promote",
                                             replacing="blind")
        assert admin.get("/v1/models").json()[0]["active"] == "1-int8"
        # a gate judged under another model's recipe is refused, not run
        load(admin, ROOT / "models" / "deeppcb-ref" / "1")
        put = admin.put("/v1/recipes/ref-rules", json={"name": "ref-rules", "version": "1",
                                                       "model": "deeppcb-ref"})
        assert put.status_code == 200, put.text
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "1", "golden": "line1",
                                                        "recipe": "ref-rules"})
        assert r.status_code == 422, r.text
        assert "recipe ref-rules judges model deeppcb-ref, not deeppcb" in r.json()["error"]["message"]


def _until(fn: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_shadow_disagreements_reach_the_review_queue(launch: Callable[..., Running],
                                                      variants: Path) -> None:
    srv = server(launch, variants, store_pass_rate=0.0,
                 lifecycle={"shadow": {"queue": 64}, "capture": {
                     "random_rate": 0.0, "near_threshold": 0.0, "rare_share": 0.0}})
    frames = DEFECTIVE[:4] + GOOD[:2]
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        before = [r["verdict"] for r in inspect(line, frames)]
        load(admin, variants / "deeppcb" / "jumpy")
        r = admin.post("/v1/golden/g", json={})
        assert r.status_code == 422 and "no reviewed" in r.json()["error"]["message"]
        # never gated: may shadow (require_gate is off); the active version may not
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "1"})
        assert r.status_code == 422
        # a rate is a JSON number, a yes a JSON true: "0.5" and "yes" started a shadow
        for bad, field in (({"sample_rate": "0.5"}, "sample_rate"), ({"sample_rate": True}, "sample_rate"),
                           ({"force": "yes"}, "force")):
            r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy", **bad})
            assert r.status_code == 422 and f"body.{field}" in r.json()["error"]["message"], r.text
        assert not admin.get("/v1/models/deeppcb/shadow").json()["running"]
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy", "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        assert r.json()["running"] and r.json()["shadow"]["version"] == "jumpy"
        after = inspect(line, frames)
        # the shadow never changes a verdict
        assert [r["verdict"] for r in after] == before
        assert all(r["model"]["version"] == "1" for r in after)
        status = _until(lambda: (s := rev.get("/v1/models/deeppcb/shadow").json())["compared"] == 6
                        and s, "the shadow to judge six frames")
        passes = [r for r in after if r["verdict"] == "pass"]
        assert passes, "the bundled model passes some good boards"
        assert status["disagreements"] == len(passes) and status["agreed"] == 6 - len(passes)
        assert status["agreement"] == pytest.approx((6 - len(passes)) / 6)

        queue = rev.get("/v1/inspections", params={"queue": "shadow"}).json()
        assert sorted(i["id"] for i in queue["items"]) == sorted(r["id"] for r in passes)
        # store_pass_rate 0 kept no pass: the disagreement's image is kept for the reviewer
        assert all(i["has_image"] for i in queue["items"])
        one = passes[0]["id"]
        both = rev.get(f"/v1/inspections/{one}/shadow").json()["items"][0]
        assert (both["active"]["verdict"], both["shadow"]["verdict"]) == ("pass", "fail")
        assert both["shadow"]["version"] == "jumpy" and both["shadow"]["defects"]
        # the reviewer says who was right: the board is good, the shadow was wrong
        assert rev.post(f"/v1/inspections/{one}/reviews", json={"action": "confirm"}).status_code == 200
        s = rev.get("/v1/models/deeppcb/shadow").json()
        assert s["reviewed_disagreements"] == 1 and s["shadow_false_rejects"] == 1
        assert s["active_right"] == 1 and s["shadow_escapes"] == s["active_escapes"] == 0

        queues = {q["name"]: q for q in rev.get("/v1/queues").json()["items"]}
        assert queues["shadow"]["total"] == len(passes)
        assert queues["shadow"]["unreviewed"] == len(passes) - 1
        to_label = rev.get("/v1/inspections", params={"queue": "to_label"}).json()
        assert to_label["total"] == queues["to_label"]["total"] == len(passes)
        bad = rev.get("/v1/inspections", params={"queue": "nope"})
        assert bad.status_code == 422

        r = admin.delete("/v1/models/deeppcb/shadow")
        assert r.status_code == 200 and not r.json()["running"]
        assert admin.delete("/v1/models/deeppcb/shadow").status_code == 404
        inspect(line, frames[:1])
        assert rev.get("/v1/models/deeppcb/shadow").json()["offered"] == 6  # no longer sampled
        actions = [e["action"] for e in rev.get("/v1/audit").json()["items"]]
        assert actions[:2] == ["shadow_stop", "shadow_start"]

        # a shadowed version made active has nothing left to be compared with: its shadow
        # stops, recorded (it showed as running while it compared nothing)
        assert admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy"}).json()["running"]
        assert admin.post("/v1/models/deeppcb/activate", json={"version": "jumpy"}).status_code == 200
        s = rev.get("/v1/models/deeppcb/shadow").json()
        assert not s["running"] and s["stopped_at"] and s["active_version"] == "jumpy"
        stop = rev.get("/v1/audit").json()["items"][0]
        assert (stop["action"], stop["version"]) == ("shadow_stop", "jumpy"), stop
        assert "became the active version (activated by" in stop["reason"]
        # rolled back to while it is shadowed: the same
        assert admin.post("/v1/models/deeppcb/shadow", json={"version": "1"}).json()["running"]
        assert admin.post("/v1/models/deeppcb/rollback").status_code == 200
        assert not rev.get("/v1/models/deeppcb/shadow").json()["running"]
        assert admin.delete("/v1/models/deeppcb/shadow").status_code == 404


def test_a_shadow_whose_process_dies_is_stopped_in_the_audit_log(launch: Callable[..., Running],
                                                                 variants: Path) -> None:
    """A shadow's process that ended (killed by the kernel's OOM killer, a crash in its
    graph) stopped the shadow and said so in the server's log only: the audit log showed a
    shadow started and never stopped, and nothing an operator reads over the API said why
    it no longer compared (session 52). It is a ``shadow_stop`` by the server now, with the
    exit code and the final counts."""
    import os
    import signal

    srv = server(launch, variants, lifecycle={"shadow": {"queue": 16}})
    # a shadow's process is spawned twice and loads its model each time: generous waits on
    # a loaded 2-core CI host (the server's own START_TIMEOUT_S is 120 s)
    with srv.client("line") as line, srv.client("reviewer") as rev, \
            srv.client("admin", timeout=180) as admin:
        load(admin, variants / "deeppcb" / "jumpy")
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy", "sample_rate": 1.0})
        assert r.status_code == 200 and r.json()["running"], r.text
        inspect(line, DEFECTIVE[:2])
        _until(lambda: rev.get("/v1/models/deeppcb/shadow").json()["compared"] == 2,
               "the shadow to judge two frames", 120)
        session = srv.app.state.lifecycle.shadow.session("deeppcb")
        os.kill(session.process.pid, signal.SIGKILL)
        s = _until(lambda: not (s := rev.get("/v1/models/deeppcb/shadow").json())["running"] and s,
                   "the shadow to stop", 120)
        assert s["stopped_at"] and s["compared"] == 2
        stop = _until(lambda: next((e for e in rev.get("/v1/audit").json()["items"]
                                    if e["action"] == "shadow_stop"), None),
                      "the stop in the audit log", 120)
        assert (stop["actor"], stop["version"]) == ("lineside", "jumpy"), stop
        assert "its process ended (exit code -9)" in stop["reason"], stop
        assert stop["details"]["run_id"] == s["run_id"] and stop["details"]["compared"] == 2
        # the line judged on, and a shadow starts again
        assert inspect(line, DEFECTIVE[:1])[0]["model"]["version"] == "1"
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "jumpy"})
        assert r.status_code == 200 and r.json()["running"], r.text


def test_a_promotion_past_its_bounds_rolls_back(launch: Callable[..., Running],
                                                variants: Path) -> None:
    srv = server(launch, variants, store_pass_rate=1.0, lifecycle={"rollout": {
        "min_inspections": 4, "watch_inspections": 50, "check_interval_s": 0.1,
        "max_false_rejects": 5}})
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        baseline = inspect(line, GOOD[:6])
        for r in baseline:
            rev.post(f"/v1/inspections/{r['id']}/reviews", json={"action": "false_reject"
                     if r["verdict"] == "fail" else "confirm"})
        assert admin.post("/v1/golden/good", json={}).status_code == 200
        load(admin, variants / "deeppcb" / "jumpy")
        # without golden: what it is, not a bare "Field required" (session 47, QA walk),
        # in the API's validation shape
        r = admin.post("/v1/models/deeppcb/promote", json={"version": "jumpy"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert r.json()["error"]["message"] == (
            "body.golden: Field required (golden: the golden set the version is gated on: a "
            "golden set's name (GET /v1/golden lists this server's; POST /v1/golden/{name} "
            "makes one))"), r.text
        r = admin.post("/v1/models/deeppcb/promote", json={"version": "jumpy", "golden": "good"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        r = admin.post("/v1/models/deeppcb/promote", json={
            "version": "jumpy", "golden": "good", "force": True, "reason": "see if it holds"})
        assert r.status_code == 200, r.text
        promo = r.json()
        assert not promo["report"]["passed"] and promo["rollout"]["state"] == "watching"
        assert promo["rollout"]["baseline_inspections"] == 6
        judged = inspect(line, GOOD[:6])
        assert {r["model"]["version"] for r in judged[:4]} == {"jumpy"}
        watch = _until(lambda: (w := rev.get("/v1/models/deeppcb/rollout").json())["state"]
                       == "rolled_back" and w, "the automatic rollback")
        assert "fail rate" in watch["why"] and watch["fail_rate"] > watch["baseline_fail_rate"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        log = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"]
        assert [e["action"] for e in log[:3]] == ["auto_rollback", "force_promote", "gate"]
        assert log[0]["actor"] == "lineside" and log[0]["reason"] == watch["why"]
        assert inspect(line, GOOD[:1])[0]["model"]["version"] == "1"
        # a golden set of good parts alone compares no escapes: it passes no one
        assert any("no defective part" in why for why in promo["report"]["reasons"])
        # the automatic rollback was a rollback: a manual one cannot bring jumpy back
        r = admin.post("/v1/models/deeppcb/rollback")
        assert r.status_code == 422 and "no earlier version" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["history"] == []
        # nor when jumpy was active once before (it stayed in the history, and a rollback
        # after the automatic one put it back; lifecycle review, session 32)
        for version in ("jumpy", "1"):
            assert admin.post("/v1/models/deeppcb/activate", json={
                "version": version, "force": True, "reason": "by hand"}).status_code == 200
        r = admin.post("/v1/models/deeppcb/promote", json={
            "version": "jumpy", "golden": "good", "force": True, "reason": "once more"})
        assert r.status_code == 200, r.text
        inspect(line, GOOD[:6])
        _until(lambda: rev.get("/v1/models/deeppcb/rollout").json()["state"] == "rolled_back",
               "the second automatic rollback")
        assert "jumpy" not in admin.get("/v1/models").json()[0]["history"]
        r = admin.post("/v1/models/deeppcb/rollback")
        assert r.status_code == 422 and "no earlier version" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"



def _decided(c: httpx.Client) -> dict[str, Any]:
    """The watch once it has counted and decided after this call (two checks on): a
    decision that is not coming is an answer, not a time-out."""
    first = c.get("/v1/models/deeppcb/rollout").json()["checks"]

    def decided() -> dict[str, Any] | None:
        w: dict[str, Any] = c.get("/v1/models/deeppcb/rollout").json()
        return w if w["state"] != "watching" or w["checks"] >= first + 2 else None

    return _until(decided, "two checks of the watch")


def test_a_promotion_after_a_version_failing_two_thirds_still_rolls_back(
        launch: Callable[..., Running], variants: Path) -> None:
    """A line whose version failed two thirds of its parts (the demo's sample boards): the
    bound max(previous x 1.5, previous + 5 points) was 100%, and a candidate failing every
    part kept running (session 52). Its pass rate fallen below the previous one / 1.5
    rolls it back now."""
    srv = server(launch, variants, store_pass_rate=1.0, lifecycle={"rollout": {
        "min_inspections": 4, "watch_inspections": 50, "check_interval_s": 0.1}})
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        before = inspect(line, DEFECTIVE[:4] + GOOD[:2])
        assert [r["verdict"] for r in before] == ["fail"] * 4 + ["pass"] * 2  # 67%
        for r in before:
            rev.post(f"/v1/inspections/{r['id']}/reviews", json={"action": "confirm"})
        assert admin.post("/v1/golden/line", json={}).status_code == 200
        load(admin, variants / "deeppcb" / "jumpy")
        r = admin.post("/v1/models/deeppcb/promote", json={
            "version": "jumpy", "golden": "line", "force": True, "reason": "a high-fail line"})
        assert r.status_code == 200, r.text
        assert r.json()["rollout"]["baseline_fail_rate"] == pytest.approx(2 / 3)
        judged = inspect(line, DEFECTIVE[:4])
        assert {(j["model"]["version"], j["verdict"]) for j in judged} == {("jumpy", "fail")}
        watch = _decided(rev)
        assert watch["state"] == "rolled_back", watch
        assert "fail rate 100.0% over 4 inspections" in watch["why"]
        assert "above the bound 77.8%" in watch["why"] and "66.7%" in watch["why"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        log = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"]
        assert log[0]["action"] == "auto_rollback" and log[0]["reason"] == watch["why"]


def test_capture_keeps_near_threshold_passes_to_label_within_the_cap(
        launch: Callable[..., Running], variants: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every sample board has detections scored 0.1-0.7 under thresholds of ~0.7: with a
    # margin of 0.6 each is "near the threshold"; the cap keeps two an hour
    _in_one_hour(monkeypatch)
    srv = server(launch, variants, store_pass_rate=0.0, lifecycle={"capture": {
        "per_hour": 2, "near_threshold": 0.6, "random_rate": 0.0, "rare_share": 0.0}})
    with srv.client("line") as line, srv.client("reviewer") as rev:
        results = inspect(line, GOOD[:4])
        page = rev.get("/v1/inspections", params={"queue": "to_label"}).json()
        assert page["total"] == 2 and all(i["has_image"] for i in page["items"])
        assert {i["id"] for i in page["items"]} <= {r["id"] for r in results}
        passes = rev.get("/v1/inspections", params={"verdict": "pass"}).json()["items"]
        kept = {i["id"] for i in page["items"]}
        # the store's own pass sampling is 0: a pass not captured has no image
        assert all(not i["has_image"] for i in passes if i["id"] not in kept)
        queues = rev.get("/v1/queues").json()
        assert queues["capture_used_this_hour"]["near_threshold"] == 2
        assert {q["name"]: q["total"] for q in queues["items"]}["to_label"] == 2


def _in_one_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture cap's clock held in the middle of an hour: its places are per clock hour,
    and a run that crossed one (at hh:59:59) had two more places for the same inspections."""
    from types import SimpleNamespace

    from lineside_inspect.lifecycle import capture

    monkeypatch.setattr(capture, "time", SimpleNamespace(time=lambda: 1_800_000_000.0 + 1800))


def _golden_from_reviews(line: httpx.Client, rev: httpx.Client, admin: httpx.Client,
                         name: str) -> None:
    for r, f in zip(inspect(line, DEFECTIVE[:3] + GOOD[:3]), DEFECTIVE[:3] + GOOD[:3], strict=True):
        action = "false_reject" if "_temp" in f.name and r["verdict"] == "fail" else "confirm"
        assert rev.post(f"/v1/inspections/{r['id']}/reviews", json={"action": action}).status_code == 200
    assert admin.post(f"/v1/golden/{name}", json={}).status_code == 200


def test_a_gate_admits_only_against_the_active_version_and_only_its_card(
        launch: Callable[..., Running], variants: Path, tmp_path: Path) -> None:
    """A report compared with another version than the active one admits nothing; a version
    is never gated against itself; a loaded version cannot change its package; a recipe
    cannot pin an unadmitted version; the first version of a new model is recorded, not
    refused."""
    srv = server(launch, variants, store_pass_rate=1.0,
                 lifecycle={"gate": {"require_gate": True}})
    int8 = ROOT / "models" / "deeppcb" / "1-int8"
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        _golden_from_reviews(line, rev, admin, "g")
        load(admin, int8)
        load(admin, variants / "deeppcb" / "blind")
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "1", "golden": "g"})
        assert r.status_code == 422 and "against itself" in r.json()["error"]["message"]
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "1-int8", "golden": "g"})
        assert r.status_code == 200 and r.json()["passed"], r.json()
        report = r.json()["id"]
        # another version judges now: the pass against version 1 no longer admits
        r = admin.post("/v1/models/deeppcb/activate",
                       json={"version": "blind", "force": True, "reason": "trial"})
        assert r.status_code == 200, r.text
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "1-int8"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "gate_failed"
        assert report in r.json()["error"]["message"]
        assert "not the active one" in r.json()["error"]["message"]
        assert admin.post("/v1/models/deeppcb/rollback").json()["active"] == "1"
        # a loaded version name keeps its graph and card: a changed package is a new version
        recal = variants / "deeppcb" / "1-int8"
        shutil.rmtree(recal, ignore_errors=True)
        shutil.copytree(int8, recal)
        card = json.loads((recal / "model.json").read_text())
        card["thresholds"] = dict.fromkeys(card["thresholds"], 0.999)
        (recal / "model.json").write_text(json.dumps(card))
        r = admin.post("/v1/models", json={"path": str(recal), "activate": False})
        assert r.status_code == 422 and "another graph or card" in r.json()["error"]["message"]
        shutil.rmtree(recal)
        # a recipe pinning a version makes it judge: admitted like an activation, by a pass
        # under that recipe (session 43: deeppcb-default's pass said nothing of its rules)
        pin = {"name": "pinned", "version": "1", "model": "deeppcb", "model_version": "blind"}
        r = admin.put("/v1/recipes/pinned", json=pin)
        assert r.status_code == 409 and "pins deeppcb blind" in r.json()["error"]["message"]
        r = admin.put("/v1/recipes/pinned", json={**pin, "model_version": "1-int8"})
        assert r.status_code == 409, r.text
        assert ("recipe pinned: no passing gate report under it"
                in r.json()["error"]["message"])
        # put following the active version, gated under it, then pinned
        follow = {k: v for k, v in pin.items() if k != "model_version"}
        assert admin.put("/v1/recipes/pinned", json=follow).status_code == 200
        r = admin.post("/v1/models/deeppcb/gate",
                       json={"version": "1-int8", "golden": "g", "recipe": "pinned"})
        assert r.status_code == 200 and r.json()["passed"], r.json()
        under_pin = r.json()["id"]
        r = admin.put("/v1/recipes/pinned", json={**pin, "model_version": "1-int8"})
        assert r.status_code == 200, r.text
        put = rev.get("/v1/audit").json()["items"][0]
        assert put["action"] == "recipe_put" and put["details"]["pinned"] == ["deeppcb 1-int8"]
        pinned = admin.get("/v1/models/deeppcb/lineage").json()["admissions"][0]
        assert (pinned["role"], pinned["version"], pinned["gate_report_id"]) == (
            "pinned", "1-int8", under_pin)
        r = admin.put("/v1/recipes/fused", json={"name": "fused", "model": "deeppcb",
                                                 "anomaly": {"model": "nope", "model_version": "1"}})
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "1-int8"})
        assert r.status_code == 200, r.text
        assert admin.get("/v1/models/deeppcb/lineage").json()["admissions"][0][
            "gate_report_id"] == report
        # a new model name: its first version judges at once, recorded (not a false 409)
        r = admin.post("/v1/models", json={"path": str(ROOT / "models" / "deeppcb-good" / "1")})
        assert r.status_code == 200 and r.json()["active"] == "1", r.text
        first = rev.get("/v1/audit", params={"model": "deeppcb-good"}).json()["items"]
        assert [e["action"] for e in first] == ["activate"] and "first version" in first[0]["reason"]


def test_without_a_store_the_card_recipe_still_follows_the_active_card(
        launch: Callable[..., Running], variants: Path) -> None:
    srv = server(launch, variants, store=False)
    with srv.client("line") as line, srv.client("admin") as admin:
        assert inspect(line, DEFECTIVE[:1])[0]["verdict"] == "fail"
        load(admin, variants / "deeppcb" / "blind")
        assert admin.post("/v1/models/deeppcb/activate", json={"version": "blind"}).status_code == 200
        judged = inspect(line, DEFECTIVE[:1])[0]
        assert (judged["model"]["version"], judged["verdict"]) == ("blind", "pass")


def test_require_gate_needs_a_store() -> None:
    from pydantic import ValidationError

    from lineside_inspect.config import Settings

    with pytest.raises(ValidationError, match="require_gate needs store: true"):
        Settings(store=False, lifecycle={"gate": {"require_gate": True}})


def test_a_recalibrated_card_is_another_candidate_across_a_restart(tmp_path: Path) -> None:
    """``lineside calibrate PKG --write`` keeps name, version and graph: after a restart the
    report made for the old card does not admit the new thresholds."""
    from .conftest import keyed, start_server

    roots = tmp_path / "models"
    pkg = roots / "deeppcb" / "1-int8"
    shutil.copytree(ROOT / "models" / "deeppcb" / "1-int8", pkg)
    kw: dict[str, Any] = {"model_roots": [str(ROOT / "models"), str(roots)],
                          "data_dir": str(tmp_path / "data"), "store_pass_rate": 1.0,
                          "lifecycle": {"gate": {"require_gate": True}}}
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
            _golden_from_reviews(line, rev, admin, "g")
            load(admin, pkg)
            r = admin.post("/v1/models/deeppcb/gate", json={"version": "1-int8", "golden": "g"})
            assert r.json()["passed"], r.json()
    finally:
        stop()
    card = json.loads((pkg / "model.json").read_text())
    original = card["thresholds"]
    card["thresholds"] = {k: round(v * 0.9, 4) for k, v in card["thresholds"].items()}
    (pkg / "model.json").write_text(json.dumps(card))
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("admin") as admin:
            load(admin, pkg)
            r = admin.post("/v1/models/deeppcb/activate", json={"version": "1-int8"})
            assert r.status_code == 409 and "has not been gated" in r.json()["error"]["message"]
            assert "its passing gate report" not in r.json()["error"]["message"]  # not stale: another card
    finally:
        stop()
    (pkg / "model.json").write_text(json.dumps({**card, "thresholds": original}))
    srv, stop = start_server(keyed(**kw))  # control: the card the report was made for
    try:
        with srv.client("admin") as admin:
            load(admin, pkg)
            r = admin.post("/v1/models/deeppcb/activate", json={"version": "1-int8"})
            assert r.status_code == 200, r.text
    finally:
        stop()
    # a restart serves the version activated over the API again (session 47: it served
    # the config's), gated as it was: the audit log says so
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("reviewer") as rev:
            last = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
            assert (last["action"], last["actor"], last["version"]) == (
                "restore", "lineside", "1-int8")
    finally:
        stop()
    # unless its card changed since: the config's version, and a startup entry says so
    (pkg / "model.json").write_text(json.dumps(card))
    srv, stop = start_server(keyed(**kw))
    try:
        with srv.client("reviewer") as rev:
            last = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
            assert (last["action"], last["actor"], last["version"]) == ("startup", "lineside", "1")
            assert "the last activation recorded was 1-int8" in last["reason"]
    finally:
        stop()


def test_a_failed_gate_is_not_cleared_by_an_easier_comparison(
        launch: Callable[..., Running], variants: Path) -> None:
    """A failure against the active version stands: a later pass against another version
    (stale) or on another, hand-picked golden set does not admit the version."""
    srv = server(launch, variants, store_pass_rate=1.0)
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        _golden_from_reviews(line, rev, admin, "line1")
        load(admin, variants / "deeppcb" / "blind")
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "blind", "golden": "line1"})
        assert not r.json()["passed"]
        failed = r.json()["id"]
        blind2 = variant(variants / "more", "blind2", 0.999)  # as blind as the candidate
        load(admin, blind2)
        r = admin.post("/v1/models/deeppcb/gate",
                       json={"version": "blind", "golden": "line1", "against": "blind2"})
        assert r.json()["passed"], r.json()  # identical verdicts
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind"})
        assert r.status_code == 409 and failed in r.json()["error"]["message"]
        # a set of good boards alone admits no one; a set with one defect both catch would
        # pass, and still does not clear the failure on line1
        good = [i["id"] for i in rev.get("/v1/inspections", params={"limit": 50}).json()["items"]
                if i["verdict"] == "pass"]
        if good:
            assert admin.post("/v1/golden/easy", json={"inspections": good}).status_code == 200
            r = admin.post("/v1/models/deeppcb/gate", json={"version": "blind", "golden": "easy"})
            assert not r.json()["passed"]
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind"})
        assert r.status_code == 409 and "failed its gate" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"
        # nor a pass on the same set under the same recipe name whose rules were replaced
        default = next(r for r in admin.get("/v1/recipes").json() if r["default"])
        blunt = {k: v for k, v in default.items()
                 if k not in ("default", "put_over_api")} | {"min_size_px": 1e6, "version": "2"}
        assert admin.put(f"/v1/recipes/{default['name']}", json=blunt).status_code == 200
        r = admin.post("/v1/models/deeppcb/gate", json={"version": "blind", "golden": "line1"})
        assert r.json()["passed"] and r.json()["recipe"] == default["name"], r.json()
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind"})
        assert r.status_code == 409 and "failed its gate" in r.json()["error"]["message"]
        # nor does a pass on the same set under a recipe that judges nothing
        lenient = {"name": "lenient", "model": "deeppcb", "default_min_score": 0.999}
        assert admin.put("/v1/recipes/lenient", json=lenient).status_code == 200
        r = admin.post("/v1/models/deeppcb/gate",
                       json={"version": "blind", "golden": "line1", "recipe": "lenient"})
        assert r.json()["passed"], r.json()
        r = admin.post("/v1/models/deeppcb/activate", json={"version": "blind"})
        assert r.status_code == 409 and "failed its gate" in r.json()["error"]["message"]


def _metric(text: str, name: str, recipe: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(f'{name}{{recipe="{recipe}"}}'))
    return float(line.rsplit(" ", 1)[1])


def test_a_fail_rate_jump_raises_an_alarm_that_clears_and_can_be_relearned(
        launch: Callable[..., Running], variants: Path) -> None:
    """Good parts teach the usual rate (0); a run of fails is an alarm (log, metrics, audit
    log, GET /v1/alarms); good parts again clear it; relearning is for admins, recorded."""
    srv = server(launch, variants, lifecycle={"fail_rate_alarm": {
        "baseline_inspections": 6, "window": 4, "max_fail_rate_increase": 0.3}})
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        assert rev.get("/v1/alarms").json() == {"items": []}
        assert {r["verdict"] for r in inspect(line, GOOD[:6])} == {"pass"}
        (track,) = rev.get("/v1/alarms").json()["items"]
        recipe = track["recipe"]
        assert track["state"] == "ok" and track["usual_fail_rate"] == 0
        assert track["judged_by"] == "deeppcb 1" and track["bound"] == pytest.approx(0.3)
        # the window holds the baseline's last good parts: 2 fails of 4 are above 30%
        assert {r["verdict"] for r in inspect(line, DEFECTIVE[:2])} == {"fail"}
        (track,) = rev.get("/v1/alarms").json()["items"]
        assert track["state"] == "alarm" and track["recent_fail_rate"] == 0.5
        assert "fail rate 50.0% over the last 4 inspections, above the bound 30.0%" in track["why"]
        assert _metric(line.get("/metrics").text, "lineside_fail_rate_alarm", recipe) == 1.0
        # the verdicts are not changed by it: defects are still rejected, good parts pass
        assert {r["verdict"] for r in inspect(line, DEFECTIVE[2:4])} == {"fail"}
        assert {r["verdict"] for r in inspect(line, GOOD[:3])} == {"pass"}
        assert rev.get("/v1/alarms").json()["items"][0]["state"] == "alarm"  # 1 of 4 failed
        inspect(line, GOOD[3:4])
        (track,) = rev.get("/v1/alarms").json()["items"]
        assert track["state"] == "ok" and track["recent_fail_rate"] == 0
        text = line.get("/metrics").text
        assert _metric(text, "lineside_fail_rate_alarm", recipe) == 0.0
        assert _metric(text, "lineside_recent_fail_rate", recipe) == 0.0
        # the audit log is written off the verdict path, in order
        log = _until(lambda: (items := rev.get("/v1/audit", params={"model": "deeppcb"}).json()[
            "items"]) and items[0]["action"] == "fail_rate_cleared" and items, "the audit log")
        assert [e["action"] for e in log[:2]] == ["fail_rate_cleared", "fail_rate_alarm"]
        assert log[1]["actor"] == "lineside" and log[1]["version"] == "1"
        assert log[1]["details"]["recent_fail_rate"] == 0.5

        # relearning forgets the usual rate: admins only, named recipes only, recorded
        r = rev.post(f"/v1/alarms/{recipe}/relearn", json={})
        assert r.status_code == 403
        r = admin.post("/v1/alarms/nope/relearn", json={})
        assert r.status_code == 404 and recipe in r.json()["error"]["message"]
        assert admin.post("/v1/alarms/bad%20name/relearn", json={}).status_code == 422
        r = admin.post(f"/v1/alarms/{recipe}/relearn", json={"reason": "new lot <b>2</b>"})
        assert r.status_code == 200 and r.json()["baseline_inspections"] == 6
        (track,) = rev.get("/v1/alarms").json()["items"]
        assert track["state"] == "learning" and track["baseline_inspections"] == 0
        entry = rev.get("/v1/audit", params={"action": "fail_rate_relearn"}).json()["items"][0]
        assert entry["actor"] == "admin" and entry["reason"] == "new lot <b>2</b>"

        # a recipe put over the API and dropped in alarm: the alarm ends with it
        r = admin.put("/v1/recipes/r2", json={"name": "r2", "model": "deeppcb"})
        assert r.status_code == 200, r.text
        inspect(line, GOOD[:6] + DEFECTIVE[:2], recipe="r2")
        states = {t["recipe"]: t["state"] for t in rev.get("/v1/alarms").json()["items"]}
        assert states == {recipe: "learning", "r2": "alarm"}
        _until(lambda: rev.get("/v1/audit").json()["items"][0]["action"] == "fail_rate_alarm",
               "the alarm's audit entry (written off the verdict path)")
        assert admin.delete("/v1/recipes/r2").status_code == 200
        assert [t["recipe"] for t in rev.get("/v1/alarms").json()["items"]] == [recipe]
        text = line.get("/metrics").text
        assert 'lineside_fail_rate_alarm{recipe="r2"}' not in text
        assert 'lineside_recent_fail_rate{recipe="r2"}' not in text
        log = _until(lambda: (items := rev.get("/v1/audit").json()["items"])
                     and items[0]["action"] == "fail_rate_cleared" and items, "the drop's end")
        assert [e["action"] for e in log[:3]] == ["fail_rate_cleared", "recipe_delete",
                                                  "fail_rate_alarm"]
        assert "r2 was dropped" in log[0]["reason"]


def test_the_fail_rate_alarm_needs_no_store_and_can_be_off(
        launch: Callable[..., Running], variants: Path) -> None:
    srv = server(launch, variants, store=False,
                 lifecycle={"fail_rate_alarm": {"baseline_inspections": 10, "window": 10}})
    with srv.client("line") as line, srv.client("admin") as admin:
        inspect(line, DEFECTIVE[:2])
        (track,) = admin.get("/v1/alarms").json()["items"]
        assert track["state"] == "learning" and track["baseline_inspections"] == 2
        assert track["recent_fail_rate"] == 1.0 and track["bound"] is None  # not judged yet
        r = admin.post(f"/v1/alarms/{track['recipe']}/relearn", json={})
        assert r.status_code == 200  # no audit log without a store, and no error either
    off = server(launch, variants, store=False, lifecycle={"fail_rate_alarm": {"enabled": False}})
    with off.client("admin") as admin:
        r = admin.get("/v1/alarms")
        assert r.status_code == 404 and "fail_rate_alarm.enabled" in r.json()["error"]["message"]



def test_a_line_that_usually_fails_two_thirds_raises_the_alarm_when_it_fails_all(
        launch: Callable[..., Running], variants: Path) -> None:
    """The bound max(usual x 2, usual + 5 points) was 133% at a usual two thirds: such a line
    never raised the alarm, failing every part (session 52). Its pass rate halved does."""
    srv = server(launch, variants, store=False,
                 lifecycle={"fail_rate_alarm": {"baseline_inspections": 6, "window": 4}})
    with srv.client("line") as line, srv.client("reviewer") as rev:
        learned = inspect(line, DEFECTIVE[:4] + GOOD[:2])
        assert [r["verdict"] for r in learned] == ["fail"] * 4 + ["pass"] * 2
        (track,) = rev.get("/v1/alarms").json()["items"]
        assert track["usual_fail_rate"] == pytest.approx(2 / 3)
        assert track["bound"] == pytest.approx(5 / 6)  # 1 - (1/3) / 2
        inspect(line, DEFECTIVE[:3])  # 3 of 4 fail: 75%, within the bound
        assert rev.get("/v1/alarms").json()["items"][0]["state"] == "ok"
        inspect(line, DEFECTIVE[3:4])  # every one of the last 4 fails
        (track,) = rev.get("/v1/alarms").json()["items"]
        assert track["state"] == "alarm" and track["recent_fail_rate"] == 1.0, track
        assert "fail rate 100.0% over the last 4 inspections, above the bound 83.3%" in track["why"]


def test_the_fail_rate_alarm_resumes_after_a_restart(tmp_path: Path, variants: Path) -> None:
    """A restart keeps the counts (saved under the data folder at shutdown): once the
    server is ready an alarm stands, said again in the audit log."""
    from .conftest import keyed, start_server

    def start(**more: Any) -> tuple[Running, Callable[[], None]]:
        return start_server(keyed(
            model_roots=[str(ROOT / "models"), str(variants)], data_dir=str(tmp_path),
            lifecycle={"fail_rate_alarm": {"baseline_inspections": 6, "window": 4,
                                           "max_fail_rate_increase": 0.3, **more}}))

    srv, stop = start()
    try:
        with srv.client("line") as line, srv.client("reviewer") as rev, \
                srv.client("admin") as admin:
            inspect(line, GOOD[:6] + DEFECTIVE[:2])
            # and a recipe put over the API (loaded after the start-up hooks)
            r = admin.put("/v1/recipes/put-only", json={"name": "put-only", "model": "deeppcb"})
            assert r.status_code == 200, r.text
            inspect(line, GOOD[:6] + DEFECTIVE[:2], recipe="put-only")
            track, put = rev.get("/v1/alarms").json()["items"]
            assert (track["state"], put["recipe"], put["state"]) == ("alarm", "put-only", "alarm")
    finally:
        stop()
    assert (tmp_path / "lifecycle" / "fail_rate_alarm.json").is_file()
    srv, stop = start()
    try:
        with srv.client("line") as line, srv.client("reviewer") as rev:
            # shown once the server is ready, before any inspection: the same models judge
            again, put_again = rev.get("/v1/alarms").json()["items"]
            assert (again["state"], again["recent_fail_rate"]) == ("alarm", 0.5)
            assert again["baseline_inspections"] == 6 and again["since"] == track["since"]
            assert (put_again["recipe"], put_again["state"]) == ("put-only", "alarm")
            assert _metric(line.get("/metrics").text, "lineside_fail_rate_alarm",
                           track["recipe"]) == 1.0
            inspect(line, GOOD[:1])  # the window: good, fail, fail, good
            assert rev.get("/v1/alarms").json()["items"][0]["state"] == "alarm"
            # one entry per recipe, written one after the other by the audit thread: both
            # waited for (the second could come after a look that saw only the first)
            _until(lambda: len([e for e in rev.get("/v1/audit").json()["items"]
                                if "after a restart" in e["reason"]]) >= 2,
                   "the alarms said again after the restart")
            time.sleep(0.5)  # and no more (the writer is in order: a third would be there)
            entries = [e for e in rev.get("/v1/audit").json()["items"]
                       if "after a restart" in e["reason"]]
            assert [e["action"] for e in entries] == ["fail_rate_alarm"] * 2  # one per recipe
            inspect(line, GOOD[1:4])
            assert rev.get("/v1/alarms").json()["items"][0]["state"] == "ok"
            inspect(line, GOOD[:1], recipe="put-only")
            put = rev.get("/v1/alarms").json()["items"][1]
            assert (put["recipe"], put["state"], put["baseline_inspections"]) == (
                "put-only", "alarm", 6)
    finally:
        stop()
    # saving turned off: the counts saved before are set aside, not resumed stale later
    srv, stop = start(save_every_s=0)
    stop()
    saved = tmp_path / "lifecycle" / "fail_rate_alarm.json"
    assert not saved.exists() and saved.with_name(saved.name + ".unused").is_file()


def test_a_shadow_judges_the_package_loaded_not_one_changed_on_disk_since(
        launch: Callable[..., Running], tmp_path: Path) -> None:
    """The shadow's process reads the version's folder again. Recalibrated in place after
    it was loaded (lineside calibrate --write), the folder holds another card: the shadow
    judged with it under the loaded version's name (lifecycle review, session 36). Refused
    as a reload of the changed package is, the server's folder unnamed."""
    v = variant(tmp_path, "cal", 0.999)
    srv = launch(model_roots=[str(ROOT / "models"), str(tmp_path)])
    with srv.client("admin") as admin:
        load(admin, v)
        card = json.loads((v / "model.json").read_text())
        card["thresholds"] = dict.fromkeys(card["thresholds"], 0.02)
        card["default_recipe"]["min_score"] = dict.fromkeys(card["thresholds"], 0.02)
        (v / "model.json").write_text(json.dumps(card))
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "cal"})
        assert r.status_code == 422, r.text
        msg = r.json()["error"]["message"]
        assert "changed on disk since the server loaded it" in msg and str(tmp_path) not in msg
        assert not admin.get("/v1/models/deeppcb/shadow").json()["running"]


def test_a_promotion_is_not_watched_on_a_recipe_pinned_to_another_version(
        launch: Callable[..., Running]) -> None:
    """A recipe pinned to version 1 keeps judging with it: promoted under it, 1-int8 went
    active, and its watch counted 1-int8's inspections under that recipe, of which there
    are none, so it could never roll back (lifecycle review, session 36). Refused before
    the gate runs, naming the pin."""
    srv = launch(store_pass_rate=1.0)
    with srv.client("line") as line, srv.client("reviewer") as rev, srv.client("admin") as admin:
        for r in inspect(line, DEFECTIVE[:2] + GOOD[:2]):
            action = "confirm" if r["verdict"] == "fail" or not r["defects"] else "false_reject"
            assert rev.post(f"/v1/inspections/{r['id']}/reviews",
                            json={"action": action}).status_code == 200
        assert admin.post("/v1/golden/g", json={}).status_code == 200
        put = admin.put("/v1/recipes/pinned", json={"name": "pinned", "model": "deeppcb",
                                                    "model_version": "1"})
        assert put.status_code == 200, put.text
        load(admin, ROOT / "models" / "deeppcb" / "1-int8")
        r = admin.post("/v1/models/deeppcb/promote",
                       json={"version": "1-int8", "golden": "g", "recipe": "pinned"})
        assert r.status_code == 422, r.text
        assert "recipe pinned pins deeppcb 1" in r.json()["error"]["message"]
        assert admin.get("/v1/models").json()[0]["active"] == "1"


def test_a_shadow_decodes_the_frame_as_the_service_did(
        launch: Callable[..., Running], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shadow's process decoded the bytes under the built-in pixel limit and a grey
    JPEG as BGR, not as the service decodes them (the server's ``max_pixels``, grey kept
    grey): on a server allowed frames over the built-in limit each one a shadow was
    offered was an error, never compared (docs/security.md session 42). The shadow here
    is the served package under another version: every frame must agree. The built-in
    limit, read by the shadow's process as it starts, is lowered under the frames' size
    instead of sending frames over 64 Mpx."""
    from lineside_inspect.imageio import decode_image, encode_jpeg
    from lineside_inspect.opencv import cv2

    twin = tmp_path / "deeppcb" / "twin"
    shutil.copytree(MODEL, twin)
    card = json.loads((twin / "model.json").read_text())
    card["version"] = "twin"
    (twin / "model.json").write_text(json.dumps(card))
    # mono camera frames of 640x640 = 409600 pixels: within the server's limit, over the
    # built-in one the shadow's process was decoding under
    frames = [encode_jpeg(cv2.cvtColor(decode_image(f.read_bytes()), cv2.COLOR_BGR2GRAY))
              for f in (DEFECTIVE[0], GOOD[0])]
    assert decode_image(frames[0], keep_grey=True).shape == (640, 640)
    srv = launch(model_roots=[str(ROOT / "models"), str(tmp_path)], max_pixels=500_000)
    monkeypatch.setenv("LINESIDE_MAX_IMAGE_PIXELS", "300000")
    with srv.client("line") as line, srv.client("admin") as admin:
        load(admin, twin)
        r = admin.post("/v1/models/deeppcb/shadow", json={"version": "twin", "sample_rate": 1.0})
        assert r.status_code == 200, r.text
        served = [line.post("/v1/inspect", content=f, headers={"content-type": "image/jpeg"})
                  for f in frames]
        assert [s.status_code for s in served] == [200, 200], [s.text for s in served]
        assert [s.json()["verdict"] for s in served] == ["fail", "pass"]
        s = _until(lambda: (s := admin.get("/v1/models/deeppcb/shadow").json())["compared"]
                   + s["errors"] == 2 and s, "the shadow to judge both frames")
        assert (s["offered"], s["compared"], s["agreed"], s["errors"], s["disagreements"]) \
            == (2, 2, 2, 0, 0), s


def test_gate_reports_whose_stored_text_does_not_read_are_left_out_or_refused(
        launch: Callable[..., Running], variants: Path) -> None:
    """A stored gate report that is not JSON, not an object, or not a report (a hand
    edit, another writer's: SQLite keeps any text) made GET /v1/models/{name}/gates and
    GET /v1/gates/{id} a 500 (session 42 review): the list leaves it out and counts it,
    the report itself is a 422 naming it."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    srv = server(launch, variants, store_pass_rate=1.0)
    store = srv.app.state.store
    with store.engine.begin() as c:
        for i, odd in enumerate(("not json {", "[1, 2]", '{"candidate": "x"}')):
            c.execute(text(
                "INSERT INTO gate_reports (id, created_at, box_id, actor, model_name, "
                "candidate_version, candidate_sha256, against_version, against_sha256, "
                "golden_name, golden_version, golden_digest, passed, report) VALUES (:id, :at, "
                ":box, 'admin', 'deeppcb', 'x', 'a', '1', 'b', 'g', 1, 'd', 1, :r)"),
                {"id": f"odd{i}", "at": datetime.now(UTC).isoformat(" "), "box": store.box_id,
                 "r": odd})
    with srv.client("admin") as admin:
        r = admin.get("/v1/models/deeppcb/gates")
        assert r.status_code == 200, r.text
        assert r.json() == {"items": [], "left_out": 3}
        for i in range(3):
            r = admin.get(f"/v1/gates/odd{i}")
            assert r.status_code == 422, r.text
            assert r.json()["error"] == {
                "code": "unreadable_gate_report",
                "message": f"gate report 'odd{i}': its stored text does not read as a gate "
                           "report (a hand edit, or another writer's); it admits nothing"}
