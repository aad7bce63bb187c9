"""With require_gate a version is admitted only with a current pass under every recipe
that would judge it once admitted (session 43). Until then a pass under one recipe
admitted a version that other recipes judge too, with other regions, floors or partner
(docs/lifecycle.md's "Not closed"). ``"recipe": "*"`` gates under each of them in one
call. Real parts: the bundled detector and a twin of it, the tiny good-only graphs of
test_gate_fused.py, a real SQLite store, the app in process through its test client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.errors import GateRefused
from lineside_inspect.lifecycle.golden import GOLDEN_DIR
from lineside_inspect.recipes import Recipe

from .test_gate_partner import _lifecycle, _twin, gating_server, make_parts

LINE = Recipe(name="line", model="deeppcb", min_size_px=2)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_parts(tmp_path_factory.mktemp("every-recipe"))


def test_a_version_needs_a_current_pass_under_each_recipe_that_would_judge_it(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """fused and line judge deeppcb (old pins version 1: it would not judge twin). A pass
    under fused alone no longer admits twin: the refusal names line and its gate call;
    a pin under a new name needs a pass under it. gate_all gates under both, and the two
    passes admit; the audit entry names each."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        registry.add_recipe(LINE)
        registry.add_recipe(Recipe(name="old", model="deeppcb", model_version="1"))
        assert lc.judging("deeppcb", "twin") == (["fused", "line"], False)
        assert lc.judging("board-good", "2") == (["fused"], False)

        with pytest.raises(GateRefused) as refused:  # never gated: both, and all at once
            lc.activate("deeppcb", "twin", actor="admin")
        said = refused.value.message
        assert ("every recipe that would judge it once admitted, recipe(s) fused, line" in said
                and "2 of 2 without one: recipe fused: no passing gate report under it; recipe line: "
                    "no passing gate report under it" in said)
        assert ('or under all at once: POST /v1/models/deeppcb/gate {"version": "twin", '
                '"golden": "g", "recipe": "*"}') in said  # (the server's only golden set)
        # which recipes lack one, and the set's version the calls gate on (session 47 QA
        # walk: "Gate it under each:" whatever the count, no version)
        assert ('. Gate it under each of the 2 without one (fused, line), on g:1: POST '
                '/v1/models/deeppcb/gate {"version": "twin", "golden": "g", "recipe": "fused"}; '
                'POST') in said, said

        first = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert first.passed, first.reasons
        with pytest.raises(GateRefused) as refused:
            lc.activate("deeppcb", "twin", actor="admin")
        said = refused.value.message
        assert "1 of 2 without one: recipe line: no passing gate report under it" in said
        assert ('. Gate it under recipe line, on g:1: POST /v1/models/deeppcb/gate {"version": '
                '"twin", "golden": "g", "recipe": "line"}') in said, said
        assert "under each" not in said and "under all at once" not in said
        with pytest.raises(GateRefused, match=r"recipe\(s\) fused, line"):
            lc.start_shadow("deeppcb", "twin", sample_rate=None, actor="admin")
        # a recipe put pinning twin under a new name: judged by that recipe's rules
        with pytest.raises(GateRefused, match=r"recipe pin: no passing gate report under it"
                                              r".*put it first as it will stand but following"):
            lc.put_recipe(LINE.model_copy(update={"name": "pin", "model_version": "twin"}),
                          actor="admin")
        assert registry.models()["deeppcb"].active == "1"

        reports = lc.gate_all("deeppcb", "twin", golden="g", actor="admin")
        assert [(r.recipe, r.passed) for r in reports] == [("fused", True), ("line", True)]
        assert reports[0].fused_with == "board-good 1" and reports[1].fused_with is None
        stored = {d["id"] for d in lc.records.gate_reports("deeppcb")}
        assert {first.id, reports[0].id, reports[1].id} <= stored
        done = lc.activate("deeppcb", "twin", actor="admin")
        assert done == {"forced": False, "gate_report_id": reports[0].id}
        (entry,) = lc.records.audit_log(model="deeppcb", action="activate")[1][:1]
        assert entry["details"]["gate_reports"] == {"fused": reports[0].id,
                                                    "line": reports[1].id}
    finally:
        store.close()


def test_a_refused_pin_says_how_to_gate_under_the_recipe_as_it_is_being_put(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """A gate judges under a recipe as it stands, so a pin refused under a recipe being
    put (a new name, or other rules) is told to put it following the active version
    first, gate under it, then pin; followed, that admits it (session 43 docs pass: the
    refusal said to gate under the recipe, a 404 for a new name, and for other rules a
    gate under the old ones, after which the put was refused again)."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        pin = LINE.model_copy(update={"name": "pin", "model_version": "twin"})
        for recipe in (pin, pin.model_copy(update={"min_size_px": 3})):
            with pytest.raises(GateRefused) as refused:
                lc.put_recipe(recipe, actor="admin")
            said = refused.value.message
            assert ("recipe pin as it is being put is not that one: put it first as it will "
                    "stand but following the active version (no model_version), gate deeppcb "
                    'twin under it, POST /v1/models/deeppcb/gate {"version": "twin"') in said
            assert "run POST" not in said and "under the recipe as it stands:" not in said
            # followed as said
            lc.put_recipe(recipe.model_copy(update={"model_version": None}), actor="admin")
            assert lc.gate("deeppcb", "twin", golden="g", recipe="pin", actor="admin").passed
            lc.put_recipe(recipe, actor="admin")
            assert registry.recipe("pin") == recipe
    finally:
        store.close()


def test_a_good_only_version_judged_alone_and_fused_and_a_forced_admission_names_the_gap(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """board-good serves alone under alone and beside deeppcb under fused: a pass fused
    does not admit version 2; forced, the admission records that pass and the recipe that
    had none. With no recipe judging deeppcb, gate_all gates under its card's own."""
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.add_recipe(Recipe(name="alone", model="board-good"))
        assert lc.judging("board-good", "2") == (["alone", "fused"], False)
        fused = lc.gate("board-good", "2", golden="g", recipe="fused", actor="admin")
        assert fused.passed, fused.reasons
        with pytest.raises(GateRefused, match="1 of 2 without one: recipe alone: no passing gate "
                                              "report under it"):
            lc.activate("board-good", "2", actor="admin")
        done = lc.activate("board-good", "2", actor="admin", force=True, reason="night shift")
        assert done == {"forced": True, "gate_report_id": fused.id}
        (entry,) = lc.records.audit_log(model="board-good", action="force_activate")[1]
        assert entry["details"]["gate_missing"] == ["alone"]
        assert "recipe alone: no passing gate report under it" in entry["details"]["gate_stale"]
        assert (entry["details"]["gate_report_id"], entry["details"]["gate_passed"]) == (
            fused.id, True)

        registry.restore_recipe("fused", None)  # nothing judges deeppcb but its card's own
        registry.load_model(_twin(tmp_path), activate=False)
        assert lc.judging("deeppcb", "twin") == (["deeppcb-default"], True)
        (own,) = lc.gate_all("deeppcb", "twin", golden="g", actor="admin")
        assert own.recipe == "deeppcb-default" and own.passed, own.reasons
        assert lc.activate("deeppcb", "twin", actor="admin")["gate_report_id"] == own.id
    finally:
        store.close()


def test_an_every_recipe_gate_compares_each_report_with_the_version_active_when_it_began(
        parts: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A version activated while ``gate_all`` runs (activation takes no gate lock) changes
    no report of the call: each compares the candidate with the version active when it
    began, so one call answers for one pair (session 44 lifecycle tidy). Before, the
    replays after the switch compared it with the new active version (one call, reports
    against two versions), and the candidate itself activated meanwhile failed the call
    half way, as gated against itself, after its first report was stored."""
    from lineside_inspect.lifecycle import manager

    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        registry.add_recipe(LINE)
        replay = manager.run_gate

        def then_twin_active(*a: Any, **kw: Any) -> Any:
            report = replay(*a, **kw)
            registry.activate("deeppcb", "twin")  # an admin, between the two replays
            return report
        monkeypatch.setattr(manager, "run_gate", then_twin_active)
        reports = lc.gate_all("deeppcb", "twin", golden="g", actor="admin")
        assert [(r.recipe, r.against.version) for r in reports] == [("fused", "1"),
                                                                    ("line", "1")]
        entries = lc.records.audit_log(model="deeppcb", action="gate")[1]
        assert sorted(e["details"]["against"] for e in entries) == ["1", "1"]
    finally:
        store.close()


def test_an_every_recipe_gate_over_the_image_bound_is_refused_before_it_replays(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """``"*"`` replayed each recipe under the one gate lock with no bound (session 46's
    "Left"): with ``max_every_recipe_images`` below recipes x images the call, and a
    promotion with require_gate (which gates so), is refused up front naming both
    numbers and the way round, nothing stored; one recipe is never refused; at the bound
    it runs."""
    from lineside_inspect.errors import GateTooLarge
    from lineside_inspect.lifecycle.config import LifecycleSettings

    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        lc.settings = LifecycleSettings.model_validate(
            {"gate": {"require_gate": True, "max_every_recipe_images": 5}})
        # one recipe (fused) judges twin: its 3 images are never refused
        assert [r.recipe for r in lc.gate_all("deeppcb", "twin", golden="g",
                                              actor="admin")] == ["fused"]
        registry.add_recipe(LINE)  # two: 6 images
        stored = len(lc.records.gate_reports("deeppcb"))
        for call in (lambda: lc.gate_all("deeppcb", "twin", golden="g", actor="admin"),
                     lambda: lc.promote("deeppcb", "twin", golden="g", actor="admin")):
            with pytest.raises(GateTooLarge) as refused:
                call()
            said = refused.value.message
            assert refused.value.status == 422 and refused.value.code == "gate_too_large"
            assert ("would replay golden set g:1 (3 images) under 2 recipes (fused, line): 6 "
                    "images, over lifecycle.gate.max_every_recipe_images (5)") in said, said
            # one call per recipe, not a "recipe": NAME placeholder (session 47, QA walk)
            assert ('Gate under each recipe by name, one call each (POST /v1/models/deeppcb/gate '
                    '{"version": "twin", "golden": "g", "recipe": "fused"}; POST /v1/models/'
                    'deeppcb/gate {"version": "twin", "golden": "g", "recipe": "line"}; with '
                    'require_gate then activate') in said, said
            assert "NAME" not in said
        for n in range(5):  # seven: five calls, then how many more
            registry.add_recipe(LINE.model_copy(update={"name": f"line{n}"}))
        with pytest.raises(GateTooLarge) as refused:
            lc.gate_all("deeppcb", "twin", golden="g", actor="admin")
        said = refused.value.message
        assert ('"recipe": "line2"}; ... (2 more); with require_gate' in said
                and '"recipe": "line3"' not in said), said
        for n in range(5):
            registry.restore_recipe(f"line{n}", None)
        assert len(lc.records.gate_reports("deeppcb")) == stored
        assert registry.models()["deeppcb"].active == "1"
        assert lc._gate_lock.acquire(blocking=False)  # free after the refusals
        lc._gate_lock.release()
        lc.settings = LifecycleSettings.model_validate(
            {"gate": {"require_gate": True, "max_every_recipe_images": 6}})
        assert len(lc.gate_all("deeppcb", "twin", golden="g", actor="admin")) == 2
    finally:
        store.close()


def test_over_http_recipe_star_gates_under_every_judging_recipe(tmp_path: Path) -> None:
    """``"recipe": "*"`` answers one stored report per judging recipe (the single-recipe
    answer is unchanged); anything else that is not a name is a 422 naming the field."""
    with gating_server(tmp_path, LINE) as client:
        for bad in ("**", " *", ["*"], "*/.."):
            r = client.post("/v1/models/deeppcb/gate",
                            json={"version": "twin", "golden": "g", "recipe": bad})
            assert r.status_code == 422 and "recipe" in r.text, (bad, r.text)
        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "twin", "golden": "g", "recipe": "line"})
        assert r.status_code == 200 and r.json()["recipe"] == "line" and r.json()["id"], r.text
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 409, r.text
        assert ("recipe deeppcb-default: no passing gate report under it"
                in r.json()["error"]["message"])

        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "twin", "golden": "g", "recipe": "*"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["recipe"] == "*" and body["passed"] is True
        assert [g["recipe"] for g in body["reports"]] == ["deeppcb-default", "line"]
        listed = {g["id"] for g in client.get("/v1/models/deeppcb/gates").json()["items"]}
        assert {g["id"] for g in body["reports"]} <= listed
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 200, r.text
        admitted = client.get("/v1/models/deeppcb/lineage").json()["admissions"][0]
        assert (admitted["version"], admitted["gate_report_id"]) == (
            "twin", body["reports"][0]["id"])



def test_a_promotion_gates_under_every_judging_recipe_before_it_activates(
        tmp_path: Path) -> None:
    """A promotion gated under its one recipe, then its activation wanted a pass under
    every recipe that judges the version: with two recipes judging, every promotion (and
    every fleet pull promoting through it) was a 409 after its gate had run. It gates
    under each now; the answer's report is the watched recipe's."""
    with gating_server(tmp_path, LINE) as client:
        r = client.post("/v1/models/deeppcb/promote",
                        json={"version": "twin", "golden": "g", "recipe": "line"})
        assert r.status_code == 200, r.text
        promoted = r.json()
        assert promoted["report"]["recipe"] == "line" and promoted["report"]["passed"]
        gated = client.get("/v1/models/deeppcb/gates").json()["items"]
        assert sorted(g["recipe"] for g in gated if g["candidate"]["version"] == "twin") == [
            "deeppcb-default", "line"]
        admitted = client.get("/v1/models/deeppcb/lineage").json()["admissions"][0]
        assert admitted["version"] == "twin" and not admitted["forced"]


def test_a_promotion_failing_under_many_recipes_is_told_in_a_few_and_forced_records_each(
        tmp_path: Path) -> None:
    """A promotion failing under several recipes told each in full in its 409, without
    end as recipes are put; forced, its audit entry named one of the failed reports it
    overrode (session 43, late review). Three are told and the rest counted; forced, every
    failure is recorded by its recipe."""
    from .test_lifecycle_api import variant

    with gating_server(tmp_path, LINE) as client:
        blind = variant(tmp_path / "models", "blind", 0.999)  # escapes under any of them
        assert client.post("/v1/models", json={"path": str(blind), "activate": False}
                           ).status_code == 200
        for name in ("a", "b"):  # with line and the card's own: four judge it
            r = client.put(f"/v1/recipes/{name}", json={"name": name, "model": "deeppcb"})
            assert r.status_code == 200, r.text
        r = client.post("/v1/models/deeppcb/promote", json={"version": "blind", "golden": "g"})
        assert r.status_code == 409, r.text
        said = r.json()["error"]["message"]
        assert said.startswith("deeppcb blind failed its gate under 4 of 4 recipe(s)"), said
        assert said.count("escape(s) on the golden set") == 3, said
        assert ("; and under 1 more (GET /v1/models/deeppcb/gates lists each); it may not "
                "become active") in said, said
        failed = {g["recipe"]: g["id"] for g in client.get("/v1/models/deeppcb/gates").json()[
            "items"] if g["candidate"]["version"] == "blind" and not g["passed"]}
        assert sorted(failed) == ["a", "b", "deeppcb-default", "line"]

        r = client.post("/v1/models/deeppcb/promote", json={
            "version": "blind", "golden": "g", "force": True, "reason": "night shift"})
        assert r.status_code == 200, r.text
        (entry,) = client.get("/v1/audit", params={"model": "deeppcb", "action":
                                                   "force_promote"}).json()["items"]
        gated = {g["recipe"]: g["id"] for g in client.get("/v1/models/deeppcb/gates").json()[
            "items"] if g["candidate"]["version"] == "blind" and not g["passed"]
            and g["id"] not in failed.values()}  # the forced promotion's own gates
        assert entry["details"]["gate_failed"] == gated and len(gated) == 4, entry


def test_a_box_says_it_keeps_no_golden_set_only_when_that_is_why_a_pull_is_refused(
        tmp_path: Path) -> None:
    """A pull activated as by hand (no golden set named after the model) and refused was
    said to be for want of that golden set whatever refused it: a failed gate report
    stands whatever a pull would gate with, so it is said as the lifecycle says it
    (session 43, late review); a version without a pass still gets the note first."""
    from lineside_inspect.fleet.box.models import ModelPuller
    from lineside_inspect.fleet.protocol import AssignedModel
    from lineside_inspect.package import card_digest, load_package

    from .test_lifecycle_api import variant

    with gating_server(tmp_path, LINE) as client:
        app = client.app
        puller = ModelPuller(app, app.state.settings)  # type: ignore[attr-defined]
        blind = variant(tmp_path / "models", "blind", 0.999)
        assert client.post("/v1/models", json={"path": str(blind), "activate": False}
                           ).status_code == 200
        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "blind", "golden": "g", "recipe": "line"})
        assert r.status_code == 200 and not r.json()["passed"], r.text
        said = {}
        for version, path in (("blind", blind), ("twin", tmp_path / "models" / "deeppcb" /
                                                  "twin")):
            with pytest.raises(GateRefused) as refused:
                puller._activate(path, AssignedModel(name="deeppcb", version=version,
                                                     sha256="0" * 64),
                                 card_digest(load_package(path).card))
            said[version] = refused.value.message
        assert said["blind"].startswith(f"deeppcb blind failed its gate (report {r.json()['id']}"
                                        " under recipe line"), said["blind"]
        assert said["twin"].startswith("this box keeps no golden set named deeppcb"), said


def test_a_refusals_gate_call_names_the_golden_set_the_server_has(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """A version with no report said ``"golden": "<golden set>"`` in the call it suggests,
    whatever the server held (session 43, adversarial pass): it names the set named after
    the model (a fleet pull's promote takes that one), else the server's only one; else
    it lists the sets held, or says there are none."""
    import shutil

    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        golden = tmp_path / GOLDEN_DIR

        def said() -> str:
            with pytest.raises(GateRefused) as refused:
                lc.activate("deeppcb", "twin", actor="admin")
            return refused.value.message

        one = 'POST /v1/models/deeppcb/gate {"version": "twin", "golden": "%s", "recipe": "fused"}'
        assert (one % "g") + " first" in said()  # one recipe judges it, one golden set held
        registry.add_recipe(LINE)  # two recipes judge it
        star = 'POST /v1/models/deeppcb/gate {"version": "twin", "golden": "%s", "recipe": "*"}'
        assert star % "g" in said()
        shutil.copytree(golden / "g", golden / "h")
        assert (star % "<golden set>") + " (a report" in said()
        assert '"recipe": "line"} (golden sets here: g, h); or under all at once' in said()
        shutil.copytree(golden / "g", golden / "deeppcb")
        assert star % "deeppcb" in said() and "golden sets here" not in said()
        registry.restore_recipe("line", None)
        assert (one % "deeppcb") + " first" in said()
        for name in ("g", "h", "deeppcb"):
            shutil.rmtree(golden / name)
        assert ((one % "<golden set>") + " first (this server holds no golden set: make one "
                "first, POST /v1/golden/{name}); it may not become active") in said()
    finally:
        store.close()
