"""Session 47: a fleet pull the gate refused was taken again only when the assignment
named it anew, the box restarted, or an admin activated it (session 46's "Left"). A QA
lead who fixes the box's golden set named after the model (the one a pull gates with)
expects the box to gate the pull again on it. Real parts: the app with require_gate and a
SQLite store (test_gate_partner.gating_server), the bundled detector's twin as the pulled
version, a real ed25519 key, the puller's own path for a package verified before (no hub
is needed to take it again)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.errors import GateRefused
from lineside_inspect.fleet import signing
from lineside_inspect.fleet.box.models import ModelPuller, Verified, VerifiedPulls
from lineside_inspect.fleet.protocol import AssignedModel, Assignment
from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, candidate
from lineside_inspect.package import card_digest, load_package

from .test_gate_every_recipe import LINE
from .test_gate_fused import DEFECTIVE_BOARD, GOOD_BOARD, _png
from .test_gate_partner import gating_server


@dataclass
class _Box:
    client: Any
    puller: ModelPuller
    lib: GoldenLibrary
    assignment: Assignment

    def gates(self) -> list[str]:
        """The twin's gate reports: ``golden:version passed``, sorted."""
        items = self.client.get("/v1/models/deeppcb/gates").json()["items"]
        return sorted(f"{g['golden']['name']}:{g['golden']['version']} {g['passed']}"
                      for g in items if g["candidate"]["version"] == "twin")


@contextlib.contextmanager
def _box(tmp_path: Path) -> Iterator[_Box]:
    """A gating server whose puller is assigned the twin, a package it verified before,
    and whose golden set named after the model holds good parts only: no pull passes."""
    with gating_server(tmp_path, LINE) as client:
        app = client.app
        puller = ModelPuller(app, app.state.settings)  # type: ignore[attr-defined]
        puller.root = tmp_path / "models"  # where twin was loaded from: its pulled folder
        key = signing.generate(tmp_path / "k", tmp_path / "k.pub")
        card = load_package(puller.root / "deeppcb" / "twin").card
        puller.keys = [key]
        puller.verified = VerifiedPulls(pulls=[Verified(
            name="deeppcb", version="twin", sha256="a" * 64, graph_sha256=card.sha256,
            card_digest=card_digest(card), signer=key.id)])
        lib = GoldenLibrary(tmp_path / GOLDEN_DIR)
        lib.create("deeppcb", [candidate(_png(GOOD_BOARD, False), expected="pass",
                                         boxes=None, source="good")], ["open", "short"])
        yield _Box(client, puller, lib, Assignment(revision=1, models=[AssignedModel(
            name="deeppcb", version="twin", sha256="a" * 64)]))


def test_a_gate_refused_pull_is_taken_again_when_its_golden_set_changes(
        tmp_path: Path) -> None:
    with _box(tmp_path) as box:
        app, puller, lib, assignment, gates = (box.client.app, box.puller, box.lib,
                                               box.assignment, box.gates)
        puller._apply(assignment)
        (error,) = puller.errors()
        assert "no defective part" in error and "golden set deeppcb:1" in error, error
        assert error.endswith("[waits for its golden set to change or an admin's activation]")
        assert gates() == ["deeppcb:1 False", "deeppcb:1 False"]  # line, deeppcb-default
        puller._apply(assignment)  # nothing changed: not gated again
        assert gates() == ["deeppcb:1 False"] * 2 and len(puller.errors()) == 1

        # the QA lead adds a defective board: version 2, which the pull is gated on
        lib.add("deeppcb", [candidate(_png(DEFECTIVE_BOARD, False), expected="fail",
                                      boxes=None, source="bad")])
        puller._apply(assignment)
        assert gates() == ["deeppcb:1 False"] * 2 + ["deeppcb:2 True"] * 2
        assert puller.errors() == []
        assert app.state.registry.models()["deeppcb"].active == "twin"  # type: ignore[attr-defined]


def test_a_pull_its_recipes_refused_waits_for_them_not_for_the_golden_set(
        tmp_path: Path) -> None:
    """Session 48: a pull refused because a recipe following the active version cannot
    serve it (``RecipesCannotFollow``: ``line1`` rules on class ``open``, which 2r renamed)
    was taken again, its whole gate replayed (under line1, line, deeppcb-default) and
    refused again, at every change of the golden set, which cannot clear it. It now waits
    for the model's recipes to change, and says so; pinning line1 takes it again. Session
    49: the refusal, knowable from the card and the recipes, comes before the gate (each
    pull replayed the whole golden set under every recipe first, then was refused)."""
    from .test_fleet_rollout_boxes import renamed

    with gating_server(tmp_path, LINE) as client:
        app = client.app
        dest = tmp_path / "models" / "deeppcb" / "2r"
        renamed(tmp_path, "2r", "open", "opening").rename(dest)
        r = client.post("/v1/models", json={"path": str(dest), "activate": False})
        assert r.status_code == 200, r.text
        r = client.put("/v1/recipes/line1", json={"name": "line1", "model": "deeppcb",
                                                  "min_score": {"open": 0.05}})
        assert r.status_code == 200, r.text
        puller = ModelPuller(app, app.state.settings)  # type: ignore[attr-defined]
        puller.root = tmp_path / "models"
        key = signing.generate(tmp_path / "k", tmp_path / "k.pub")
        card = load_package(dest).card
        puller.keys = [key]
        puller.verified = VerifiedPulls(pulls=[Verified(
            name="deeppcb", version="2r", sha256="b" * 64, graph_sha256=card.sha256,
            card_digest=card_digest(card), signer=key.id)])
        lib = GoldenLibrary(tmp_path / GOLDEN_DIR)
        lib.create("deeppcb", [candidate(_png(GOOD_BOARD, False), expected="pass", boxes=None,
                                         source="good"),
                               candidate(_png(DEFECTIVE_BOARD, False), expected="fail",
                                         boxes=None, source="bad")], ["open", "short"])
        assignment = Assignment(revision=1, models=[AssignedModel(
            name="deeppcb", version="2r", sha256="b" * 64)])

        def gates() -> int:
            items = client.get("/v1/models/deeppcb/gates").json()["items"]
            return sum(g["candidate"]["version"] == "2r" for g in items)

        puller._apply(assignment)
        (error,) = puller.errors()
        assert error.startswith("deeppcb 2r: deeppcb 2r cannot judge under recipe line1"), error
        assert error.endswith("[waits for a recipe of deeppcb to change (pinned, put, deleted) "
                              "or an admin's activation; a golden set change does not take "
                              "it again]") and len(error) <= 500, error
        assert gates() == 0  # refused before any replay (3 reports, then refused, before)
        lib.add("deeppcb", [candidate(_png(GOOD_BOARD, False), expected="pass", boxes=None,
                                      source="good again")])
        puller._apply(assignment)  # the golden set changed: not gated again
        assert gates() == 0 and puller.errors() == [error]

        # the refusal's way: line1 pinned to the version it was written for
        r = client.put("/v1/recipes/line1", json={"name": "line1", "model": "deeppcb",
                                                  "model_version": "1",
                                                  "min_score": {"open": 0.05}})
        assert r.status_code == 200, r.text
        puller._apply(assignment)
        assert puller.errors() == [] and gates() == 2  # line, deeppcb-default on deeppcb:2
        assert app.state.registry.models()["deeppcb"].active == "2r"  # type: ignore[attr-defined]


def test_a_golden_set_changed_while_the_gate_ran_takes_the_pull_again(
        tmp_path: Path) -> None:
    """Session 47 (attack pass): the refusal remembered the set as it stood once the gate
    had ended. A QA lead adding the missing board while the pull's gate ran (it replays
    the whole set: minutes on a large one) saw the pull refused on the version before and
    never taken again: the change came before the mark. The set is now marked before the
    gate reads it: the next pull gates on what was added, once."""
    with _box(tmp_path) as box:
        app, puller, lib, assignment, gates = (box.client.app, box.puller, box.lib,
                                               box.assignment, box.gates)
        take = puller._take

        def gated_while_added(m: AssignedModel) -> None:
            try:
                take(m)
            finally:  # added after the gate read version 1, before it answered
                if len(lib.versions("deeppcb")) == 1:
                    lib.add("deeppcb", [candidate(_png(DEFECTIVE_BOARD, False),
                                                  expected="fail", boxes=None, source="bad")])

        puller._take = gated_while_added  # type: ignore[method-assign]

        puller._apply(assignment)
        (error,) = puller.errors()
        assert "golden set deeppcb:1" in error and lib.versions("deeppcb") == [1, 2], error
        puller._apply(assignment)  # the set changed since the gate read it: taken again
        assert gates() == ["deeppcb:1 False"] * 2 + ["deeppcb:2 True"] * 2
        assert puller.errors() == []
        assert app.state.registry.models()["deeppcb"].active == "twin"  # type: ignore[attr-defined]


def test_a_golden_set_named_for_a_model_judges_its_gates_over_http_and_its_pulls(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Session 47 ("judged"): ``lifecycle.gate.golden`` names ``line1`` for deeppcb (and a
    set for a model the box does not hold: a warning at start, not a refusal). A gate
    under every recipe on ``g`` runs, is stored, and says it admits nothing; the
    activation is refused with the calls on ``line1``; a promotion on ``g`` is refused
    before it replays. A pull gated on the set named after the model (which the box
    keeps) until then: it gates on ``line1``, says it lacks it, and once made gates on it."""
    bad = candidate(_png(DEFECTIVE_BOARD, False), expected="fail", boxes=None, source="bad")
    good = candidate(_png(GOOD_BOARD, False), expected="pass", boxes=None, source="good")
    with caplog.at_level("WARNING", logger="lineside.lifecycle"), gating_server(
            tmp_path, LINE, gate={"golden": {"deeppcb": "line1", "ghost": "line1"}}) as client:
        assert ("lifecycle.gate.golden names a golden set for model(s) this server does not "
                "hold: ghost (applied once loaded)") in caplog.text
        r = client.post("/v1/models/deeppcb/gate",
                        json={"version": "twin", "golden": "g", "recipe": "*"})
        assert r.status_code == 200 and r.json()["passed"], r.text
        for report in r.json()["reports"]:
            assert report["will_not_admit"].startswith(
                "run on golden set g, while lifecycle.gate.golden requires golden set line1 "
                "for deeppcb: a pass on g admits nothing on this server"), report
        r = client.post("/v1/models/deeppcb/activate", json={"version": "twin"})
        assert r.status_code == 409, r.text
        said = r.json()["error"]["message"]
        assert ("was judged on golden set g:1, and the line requires golden set line1 for "
                "deeppcb (lifecycle.gate.golden)") in said, said
        assert ('"golden": "line1", "recipe": "line"' in said and '"golden": "g"' not in said
                and "line1, which lifecycle.gate.golden names for deeppcb, is not made" in said)
        r = client.post("/v1/models/deeppcb/promote", json={"version": "twin", "golden": "g"})
        assert r.status_code == 422 and "a promotion gated on g would not admit" in r.text

        # a pull: the box keeps a set named after the model, which the line does not count
        app = client.app
        lib = GoldenLibrary(tmp_path / GOLDEN_DIR)
        lib.create("deeppcb", [bad, good], ["open", "short"])
        puller = ModelPuller(app, app.state.settings)  # type: ignore[attr-defined]
        twin = tmp_path / "models" / "deeppcb" / "twin"
        pulled = AssignedModel(name="deeppcb", version="twin", sha256="0" * 64)
        checked = card_digest(load_package(twin).card)
        assert puller._golden_mark("deeppcb") is None
        with pytest.raises(GateRefused) as refused:
            puller._activate(twin, pulled, checked)
        assert refused.value.message.startswith(
            "this box keeps no golden set line1, the one lifecycle.gate.golden names for "
            "deeppcb and a pull gates with (lineside golden create line1 ... on the box)"), (
            refused.value.message)
        made = lib.create("line1", [bad, good], ["open", "short"])
        assert puller._golden_mark("deeppcb") == (1, made.digest)  # changed: taken again
        puller._activate(twin, pulled, checked)
        assert app.state.registry.models()["deeppcb"].active == "twin"  # type: ignore[attr-defined]
        items = client.get("/v1/models/deeppcb/gates").json()["items"]
        assert {(g["golden"]["name"], g["recipe"], g["passed"]) for g in items
                if g["will_not_admit"] is None} == {("line1", "line", True),
                                                    ("line1", "deeppcb-default", True)}


def test_a_pull_its_golden_set_could_not_judge_is_taken_again_when_the_set_or_a_recipe_changes(
        tmp_path: Path) -> None:
    """Session 55 (session 54's "Left"): a pull whose gate refused the golden set itself
    (``GoldenSetError``: here recipe ``line``'s roi lies wholly outside the set's 640x640
    boards, session 54) was remembered as refused for what the package is: never taken
    again for that assignment, though a new version of the set or the recipe put anew
    with an roi that fits clears it. It now waits for either, and says so."""
    line = LINE.model_copy(update={"roi": [[(700.0, 700.0), (800.0, 700.0), (800.0, 800.0)]]})
    with _box(tmp_path) as box:
        client, puller, lib, assignment, gates = (box.client, box.puller, box.lib,
                                                  box.assignment, box.gates)
        r = client.put("/v1/recipes/line", json=line.model_dump(mode="json", exclude_none=True)
                       | {"version": "2"})
        assert r.status_code == 200, r.text
        puller._apply(assignment)
        (error,) = puller.errors()
        assert "lies wholly outside it" in error and "golden set deeppcb:1" in error, error
        assert error.endswith("[waits for its golden set or a recipe of deeppcb to change, "
                              "or an admin's activation]"), error
        taken = []
        take = puller._take
        puller._take = lambda m: (taken.append(m.version), take(m))[1]  # type: ignore[method-assign]
        puller._apply(assignment)  # nothing changed: not taken again
        assert taken == [] and puller.errors() == [error]

        # a new version of the set: taken again (and refused again: the roi still misses)
        lib.add("deeppcb", [candidate(_png(DEFECTIVE_BOARD, False), expected="fail",
                                      boxes=None, source="bad")])
        puller._apply(assignment)
        assert taken == ["twin"], taken
        (error,) = puller.errors()
        assert "golden set deeppcb:2" in error and "lies wholly outside it" in error, error

        # the recipe put anew, its roi on the boards: taken again, gated, admitted
        r = client.put("/v1/recipes/line", json=LINE.model_dump(mode="json", exclude_none=True)
                       | {"version": "3"})
        assert r.status_code == 200, r.text
        puller._apply(assignment)
        assert taken == ["twin", "twin"] and puller.errors() == []
        # (deeppcb-default is gated before line at each take: its reports on sets 1 and 2,
        # then both on set 2)
        assert gates() == ["deeppcb:1 False"] + ["deeppcb:2 True"] * 3, gates()
        assert client.app.state.registry.models()["deeppcb"].active == "twin"  # type: ignore[attr-defined]
