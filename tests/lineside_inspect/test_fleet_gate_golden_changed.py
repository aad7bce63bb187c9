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
