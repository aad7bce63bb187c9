"""A passing gate report admits only while its recipe judges by the rules it was judged by
(session 43). Until then a pass whose recipe was put again with other rules (another
``recipe_sha256``), or deleted, still admitted the version under require_gate; a card's
own recipe (``<model>-default``), which follows a newly activated card, was compared with
the old card's rules; and a forced admission over a stale pass recorded no gate report.
Real parts: the bundled detector and a twin of it (the same verdicts), a real SQLite
store, the app in process through its test client."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from lineside_inspect.errors import GateRefused
from lineside_inspect.lifecycle.gate import rules_digest, rules_of
from lineside_inspect.lifecycle.golden import GOLDEN_DIR
from lineside_inspect.recipes import Recipe, card_recipe
from lineside_inspect.store.models import GateReportRow

from .conftest import MODEL
from .test_gate_fused import _golden
from .test_gate_partner import _lifecycle, _twin, gating_server, make_parts

LINE = Recipe(name="line", model="deeppcb")
WIDER = LINE.model_copy(update={"min_size_px": 2})  # other rules, the same verdicts here


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_parts(tmp_path_factory.mktemp("recipe-changed"))


def test_a_pass_whose_recipe_was_put_again_with_other_rules_no_longer_admits(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Activation, shadow and a recipe's pin refused, naming the report, the recipe, that
    its rules changed and the call to gate again; the recipe put back as it was, or
    pinning the version its pass judged, admits again."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        # line alone judges deeppcb here: with fused too, its pass would not admit either
        # (a pass under every recipe that judges it, session 43: test_gate_every_recipe.py)
        registry.restore_recipe("fused", None)
        registry.load_model(_twin(tmp_path), activate=False)
        registry.add_recipe(LINE)
        passed = lc.gate("deeppcb", "twin", golden="g", recipe="line", actor="admin")
        assert passed.passed and passed.recipe_sha256 == rules_digest(LINE), passed.reasons
        lc.put_recipe(WIDER, actor="admin")

        said = (f"deeppcb twin has no passing gate report that judged it as the line would "
                f"now (lifecycle.gate.require_gate): its passing gate report {passed.id} was "
                f"judged under recipe line by rules (recipe_sha256 {rules_digest(LINE)[:12]})"
                f" other than the recipe's now ({rules_digest(WIDER)[:12]})")
        again = ('Gate it again, under the recipe as it stands: POST /v1/models/deeppcb/gate '
                 '{"version": "twin", "golden": "g", "recipe": "line"}')
        with pytest.raises(GateRefused) as refused:
            lc.activate("deeppcb", "twin", actor="admin")
        assert said in refused.value.message and again in refused.value.message
        with pytest.raises(GateRefused, match="other than the recipe's now"):
            lc.start_shadow("deeppcb", "twin", sample_rate=None, actor="admin")
        # (its pass under line says nothing of pin: put pin following the active version
        # first, then gate; the session 43 docs pass, test_gate_every_recipe.py)
        with pytest.raises(GateRefused, match=r"recipe pin pins deeppcb twin, which may not "
                                              r"judge parts: deeppcb twin has no passing gate "
                                              r"report under recipe pin .*put it first as it "
                                              r"will stand but following the active version"):
            lc.put_recipe(LINE.model_copy(update={"name": "pin", "model_version": "twin"}),
                          actor="admin")
        # the same recipe put again pinning the version its pass judged: the same rules
        lc.put_recipe(LINE.model_copy(update={"model_version": "twin"}), actor="admin")
        (pin,) = [a for a in lc.records.admissions("deeppcb") if a["role"] == "pinned"]
        assert (pin["version"], pin["gate_report_id"], pin["forced"]) == ("twin", passed.id, False)
        lc.put_recipe(LINE, actor="admin")  # as it was gated: admits
        assert lc.activate("deeppcb", "twin", actor="admin") == {
            "forced": False, "gate_report_id": passed.id}
    finally:
        store.close()


def test_a_pass_whose_recipe_is_gone_or_judges_another_model_no_longer_admits(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Deleted: what judges the model now is another recipe, which the refusal names and
    gates again with. Put again for another model: said so. A forced admission over the
    stale pass records that pass and why it no longer admitted."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        registry.add_recipe(LINE)
        passed = lc.gate("deeppcb", "twin", golden="g", recipe="line", actor="admin")
        assert passed.passed, passed.reasons
        registry.restore_recipe("line", None)  # what DELETE /v1/recipes/line does
        with pytest.raises(GateRefused) as refused:
            lc.activate("deeppcb", "twin", actor="admin")
        assert (f"its passing gate report {passed.id} was judged under recipe line, which is "
                "gone (deleted or put again under another name since); recipe(s) fused judge "
                "deeppcb now. Gate it again, under what judges it now: POST "
                '/v1/models/deeppcb/gate {"version": "twin", "golden": "g", "recipe": '
                '"fused"}') in refused.value.message

        registry.add_recipe(Recipe(name="line", model="board-good"))
        with pytest.raises(GateRefused, match="under recipe line, which judges model "
                                              "board-good now, not deeppcb"):
            lc.activate("deeppcb", "twin", actor="admin")

        done = lc.activate("deeppcb", "twin", actor="admin", force=True, reason="line down")
        assert done == {"forced": True, "gate_report_id": passed.id}
        (entry,) = lc.records.audit_log(model="deeppcb", action="force_activate")[1]
        details = entry["details"]
        assert (details["gate_report_id"], details["gate_passed"]) == (passed.id, True)
        assert "which judges model board-good now, not deeppcb" in details["gate_stale"]
        admitted = lc.records.admissions("deeppcb")[0]
        assert (admitted["version"], admitted["gate_report_id"], admitted["forced"]) == (
            "twin", passed.id, True)
    finally:
        store.close()


# classes in an order of their own (not by name) and a critical class twice
ORDERED = Recipe.model_validate({"name": "line", "model": "deeppcb",
                                 "min_score": {"spur": 0.5, "copper": 0.6},
                                 "max_count": {"spur": 1, "copper": 2},
                                 "critical": ["short", "open"]})


def _as_put(recipe: Recipe) -> str:
    """sha256 of ``recipe``'s rules as its fields were put: what gates kept before the
    digest was canonical (review, session 43), of a recipe without ``tiling`` (a field
    those releases had not: session 44)."""
    import hashlib
    return hashlib.sha256(rules_of(recipe).model_dump_json(exclude={"tiling"}).encode()).hexdigest()


def test_the_same_rules_put_again_in_another_order_still_admit(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """``recipe_sha256`` was of the recipe's fields as put: the same recipe put again with
    its classes in another order (keys of a JSON body or YAML file, critical listed
    otherwise) had another digest, and its pass was refused as judged by other rules
    (review, session 43). The digest is canonical now; a report kept before (its digest of
    the fields as put) still admits under its recipe unchanged, and a failure kept before
    is cleared by a pass under the same recipe since."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.restore_recipe("fused", None)  # line alone judges deeppcb here
        registry.load_model(_twin(tmp_path), activate=False)
        registry.add_recipe(ORDERED)
        passed = lc.gate("deeppcb", "twin", golden="g", recipe="line", actor="admin")
        assert passed.passed, passed.reasons
        body = json.dumps({"critical": ["open", "short", "open"], "name": "line",
                           "max_count": {"copper": 2, "spur": 1}, "model": "deeppcb",
                           "min_score": {"copper": 0.6, "spur": 0.5}})
        lc.put_recipe(Recipe.model_validate_json(body), actor="admin")
        assert lc.activate("deeppcb", "twin", actor="admin") == {
            "forced": False, "gate_report_id": passed.id}
        lc.rollback("deeppcb", actor="admin")

        # kept before: a failure, then a pass, each of the digest as put
        legacy = _as_put(ORDERED)
        assert legacy != rules_digest(ORDERED)
        lc.put_recipe(ORDERED, actor="admin")
        with Session(store.engine) as s, s.begin():
            row = s.get(GateReportRow, passed.id)
            assert row is not None
            row.report = {**row.report, "recipe_sha256": legacy}
        assert lc.activate("deeppcb", "twin", actor="admin")["gate_report_id"] == passed.id
        lc.rollback("deeppcb", actor="admin")
        with Session(store.engine) as s, s.begin():
            row = s.get(GateReportRow, passed.id)
            assert row is not None
            row.passed, row.report = False, {**row.report, "passed": False,
                                             "reasons": ["1 new escape(s)"]}
        with pytest.raises(GateRefused, match="failed"):
            lc.activate("deeppcb", "twin", actor="admin")
        again = lc.gate("deeppcb", "twin", golden="g", recipe="line", actor="admin")
        assert again.passed and again.recipe_sha256 == rules_digest(ORDERED)
        assert lc.activate("deeppcb", "twin", actor="admin")["gate_report_id"] == again.id
    finally:
        store.close()


def _wide(root: Path) -> Path:
    """models/deeppcb/1 as version ``wide`` whose card's own recipe has another rule
    (``min_size_px`` 2): the same verdicts on the golden set."""
    dst = root / "deeppcb" / "wide"
    shutil.copytree(MODEL, dst)
    card = json.loads((dst / "model.json").read_text())
    card["default_recipe"]["min_size_px"] = 2
    (dst / "model.json").write_text(json.dumps({**card, "version": "wide"}))
    return dst


def test_a_pass_under_the_cards_own_recipe_is_judged_by_the_candidates_card_recipe(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """``deeppcb-default`` follows the active card: once wide is active the line judges by
    wide's card recipe. Its gate judges by that (it judged by version 1's), and its pass
    is compared with that: a pass made by version 1's card rules no longer admits."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.restore_recipe("fused", None)  # the card's own alone judges deeppcb here
        wide = registry.load_model(_wide(tmp_path), activate=False)
        own = card_recipe(registry.detector("deeppcb").card)
        registry.add_recipe(own)
        assert rules_digest(card_recipe(wide.card)) != rules_digest(own)
        passed = lc.gate("deeppcb", "wide", golden="g", recipe="deeppcb-default", actor="admin")
        assert passed.passed, passed.reasons
        assert passed.recipe_sha256 == rules_digest(card_recipe(wide.card))

        # a pass made by version 1's card rules (as gates made it before session 43)
        with Session(store.engine) as s, s.begin():
            row = s.get(GateReportRow, passed.id)
            assert row is not None
            row.report = {**row.report, "recipe_sha256": rules_digest(own)}
        with pytest.raises(GateRefused, match=f"report {passed.id} was judged under recipe "
                                              "deeppcb-default by rules .* other than the "
                                              "recipe's now \\(the card's own, as deeppcb "
                                              "wide's card brings it: it follows the active "
                                              "card\\)"):
            lc.activate("deeppcb", "wide", actor="admin")
        with Session(store.engine) as s, s.begin():
            row = s.get(GateReportRow, passed.id)
            assert row is not None
            row.report = {**row.report, "recipe_sha256": passed.recipe_sha256}
        assert lc.activate("deeppcb", "wide", actor="admin")["gate_report_id"] == passed.id
        assert registry.recipe("deeppcb-default") == card_recipe(wide.card)  # it followed
    finally:
        store.close()


def test_lineside_gate_takes_the_candidates_card_recipe_as_a_servers_gate_does(
        tmp_path: Path) -> None:
    """With no ``--recipe``, ``lineside gate`` judges by the card recipe, which on a server
    follows the active card: the candidate's once it is active, as the server's gate takes
    it (session 43). It took the active card's, whose other rules the line drops at the
    activation, so its report differed from the server's for such a candidate."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app
    from lineside_inspect.package import load_package

    _golden(tmp_path / GOLDEN_DIR)
    wide = _wide(tmp_path)
    r = CliRunner().invoke(app, ["gate", str(wide), "--against", str(MODEL), "--golden", "g",
                                 "--data-dir", str(tmp_path), "--threads", "1", "--json"])
    report = json.loads(r.output)
    assert report["recipe"] == "deeppcb-default"
    theirs = rules_digest(card_recipe(load_package(wide).card))
    assert theirs != rules_digest(card_recipe(load_package(MODEL).card))
    assert report["recipe_sha256"] == theirs  # what the server's gate stores (test above)


def test_over_http_a_replaced_or_deleted_recipe_refuses_and_a_force_names_the_pass(
        tmp_path: Path) -> None:
    """PUT and DELETE /v1/recipes/line after the pass: 409 gate_failed naming the report,
    the recipe and the call to gate again; a forced activation is recorded with the pass;
    the recipe put back as it was gated admits."""
    line = LINE.model_dump(mode="json", exclude_none=True)
    with gating_server(tmp_path, LINE) as client:
        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "twin", "golden": "g", "recipe": "line"})
        assert r.status_code == 200 and r.json()["passed"], r.text
        report = r.json()["id"]
        gate_again = ('POST /v1/models/deeppcb/gate {"version": "twin", "golden": "g", '
                      '"recipe": "line"}')

        # other rules, so a version of their own (session 55)
        assert client.put("/v1/recipes/line", json={**line, "version": "2", "min_size_px": 2}
                          ).status_code == 200
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        error = r.json()["error"]
        assert (r.status_code, error["code"]) == (409, "gate_failed"), r.text
        assert f"report {report} was judged under recipe line by rules" in error["message"]
        assert gate_again in error["message"]

        assert client.delete("/v1/recipes/line").status_code == 200
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 409 and "which is gone" in r.json()["error"]["message"]
        assert ("recipe(s) deeppcb-default judge deeppcb now" in r.json()["error"]["message"])
        r = client.post("/v1/models/deeppcb/activate",
                        json={"version": "twin", "force": True, "reason": "trial"})
        assert r.status_code == 200, r.text
        forced = client.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
        assert forced["action"] == "force_activate"
        assert forced["details"]["gate_report_id"] == report
        assert "which is gone" in forced["details"]["gate_stale"]
        assert client.get("/v1/models/deeppcb/lineage").json()["admissions"][0][
            "gate_report_id"] == report

        assert client.post("/v1/models/deeppcb/rollback").status_code == 200
        assert client.put("/v1/recipes/line", json=line).status_code == 200
        # deeppcb-default judges deeppcb too, and twin has no pass under it (session 43)
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 409, r.text
        assert ("recipe deeppcb-default: no passing gate report under it"
                in r.json()["error"]["message"])
        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "twin", "golden": "g", "recipe": "deeppcb-default"})
        assert r.status_code == 200 and r.json()["passed"], r.text
        own = r.json()["id"]
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 200, r.text
        latest = client.get("/v1/models/deeppcb/lineage").json()["admissions"][0]
        assert (latest["gate_report_id"], latest["forced"]) == (own, False)
        entry = client.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
        # line's pass admits again as put back, beside the new one under deeppcb-default
        assert entry["details"]["gate_reports"] == {"deeppcb-default": own, "line": report}
