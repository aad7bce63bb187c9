"""Session 47: a gate pass admits only on its golden set as it stands. Until then a pass
on version 1 of a set admitted a version after the set grew (version 2: the parts a QA
lead added because the line met them), was made again with other images, or was gone
(docs/lifecycle.md's "Not closed"). Real parts: the bundled detector and its twin, the
tiny good-only partner of test_gate_fused.py, a real SQLite store."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.errors import GateRefused
from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, candidate

from .conftest import SAMPLE
from .test_gate_fused import DEFECTIVE_BOARD, GOOD_BOARD, _png
from .test_gate_partner import _lifecycle, _twin, make_parts

OTHER_GOOD = SAMPLE / "images" / "group13000"


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_parts(tmp_path_factory.mktemp("golden-now"))


def _refusal(lc: Any) -> str:
    with pytest.raises(GateRefused) as refused:
        lc.activate("deeppcb", "twin", actor="admin")
    return refused.value.message


def test_a_pass_admits_only_on_its_golden_set_as_it_stands(
        parts: dict[str, Any], tmp_path: Path) -> None:
    lc, registry, store = _lifecycle(tmp_path, parts)
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        lib = GoldenLibrary(tmp_path / GOLDEN_DIR)
        first = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert first.passed and first.golden.version == 1, first.reasons
        d1 = first.golden.digest[:12]

        # the same images again as version 2 (the same digest): the pass still holds
        same = lib.add("g", [candidate(_png(GOOD_BOARD, False), expected="pass", boxes=None,
                                       source="good")])
        assert same.version == 2 and same.digest == first.golden.digest
        assert lc._reports(registry.detector("deeppcb", "twin")).gate is not None

        # a good part added: version 3, which the pass never replayed
        good = next(p for p in sorted(OTHER_GOOD.iterdir()) if p.name.endswith("_temp.jpg"))
        grown = lib.add("g", [candidate(good.read_bytes(), expected="pass", boxes=None,
                                        source="more-good")])
        said = _refusal(lc)
        assert (f"its passing gate report {first.id} was judged on golden set g:1 (digest "
                f"{d1}), and golden set g is at version 3 now (digest {grown.digest[:12]}); "
                "a pass counts only on the golden set as it stands. Gate it again, on g:3: "
                'POST /v1/models/deeppcb/gate {"version": "twin", "golden": "g", '
                '"recipe": "fused"}') in said, said
        with pytest.raises(GateRefused, match="is at version 3 now"):
            lc.start_shadow("deeppcb", "twin", sample_rate=None, actor="admin")
        assert registry.models()["deeppcb"].active == "1"

        # gated again as said: admitted
        again = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert again.passed and again.golden.version == 3, again.reasons
        assert lc._reports(registry.detector("deeppcb", "twin")).gate is not None

        # the set made again under its name with other images (version 1 anew)
        shutil.rmtree(tmp_path / GOLDEN_DIR / "g")
        remade = lib.create("g", [candidate(_png(DEFECTIVE_BOARD, False), expected="fail",
                                            boxes=None, source="bad"),
                                  candidate(good.read_bytes(), expected="pass", boxes=None,
                                            source="good")], ["open", "short"])
        said = _refusal(lc)
        assert (f"judged on golden set g:3 (digest {again.golden.digest[:12]}), and golden "
                f"set g is at version 1 now (digest {remade.digest[:12]}): the set was made "
                "again since, with other images") in said, said

        # the set gone
        shutil.rmtree(tmp_path / GOLDEN_DIR / "g")
        said = _refusal(lc)
        assert ("judged on golden set g:3 (digest "
                f"{again.golden.digest[:12]}), which this server no longer holds (golden "
                "sets here: none). Gate it again, on a golden set this server holds") in said
    finally:
        store.close()


# -- which golden set a pass used (session 47, "judged") ---------------------------------

def _unmade(model: str, golden: str) -> str:
    return (f" (golden set {golden}, which lifecycle.gate.golden names for {model}, is not "
            f"made on this server yet: a gate on it is refused until it is; make it first, "
            f"POST /v1/golden/{golden})")


def test_a_model_with_a_golden_set_named_is_admitted_only_by_a_pass_on_that_set(
        parts: dict[str, Any], tmp_path: Path) -> None:
    """Until then a pass on any golden set admitted: a QA lead's strict set ``line1`` was
    bypassed by a gate on a small lenient one. With ``lifecycle.gate.golden`` naming
    ``line1`` for deeppcb, the pass on ``g`` runs and is stored, says it admits nothing,
    and the activation is refused with the call on ``line1``; board-good, without an
    entry, is admitted by its pass on ``g`` as before."""
    from lineside_inspect.errors import ConfigError, NotFoundError
    from lineside_inspect.lifecycle.config import LifecycleSettings

    lc, registry, store = _lifecycle(tmp_path, parts)
    lc.settings = LifecycleSettings.model_validate(
        {"gate": {"require_gate": True, "golden": {"deeppcb": "line1"}}})
    try:
        registry.load_model(_twin(tmp_path), activate=False)
        easy = lc.gate("deeppcb", "twin", golden="g", recipe="fused", actor="admin")
        assert easy.passed, easy.reasons
        assert easy.will_not_admit == (
            "run on golden set g, while lifecycle.gate.golden requires golden set line1 for "
            "deeppcb: a pass on g admits nothing on this server (a failure on it still "
            "refuses until a pass on it clears it). Gate on line1: POST "
            '/v1/models/deeppcb/gate {"version": "twin", "golden": "line1"}'
            + _unmade("deeppcb", "line1"))
        assert lc.records.gate_report(easy.id)["will_not_admit"] == easy.will_not_admit
        (entry, *_) = lc.records.audit_log(model="deeppcb", action="gate")[1]
        assert entry["details"]["will_not_admit"] is True

        said = _refusal(lc)
        assert (f"its passing gate report {easy.id} was judged on golden set g:1, and the "
                "line requires golden set line1 for deeppcb (lifecycle.gate.golden): a pass "
                "on another set admits nothing here" + _unmade("deeppcb", "line1")
                + '. Gate it again, on line1: POST /v1/models/deeppcb/gate {"version": '
                '"twin", "golden": "line1", "recipe": "fused"}') in said, said
        with pytest.raises(GateRefused, match="the line requires golden set line1"):
            lc.start_shadow("deeppcb", "twin", sample_rate=None, actor="admin")
        # a promotion on g would gate and then be refused: refused before any replay
        kept = len(lc.records.gate_reports("deeppcb", 50))
        with pytest.raises(ConfigError, match=re.escape(
                "lifecycle.gate.golden requires golden set line1 for deeppcb: a promotion "
                "gated on g would not admit deeppcb twin")):
            lc.promote("deeppcb", "twin", golden="g", actor="admin")
        assert len(lc.records.gate_reports("deeppcb", 50)) == kept
        with pytest.raises(NotFoundError, match=re.escape(
                "golden set line1, which lifecycle.gate.golden names for deeppcb, is not "
                "made")):
            lc.gate("deeppcb", "twin", golden="line1", recipe="fused", actor="admin")
        assert registry.models()["deeppcb"].active == "1"

        # board-good has no entry: its pass on g counts, as before
        other = lc.gate("board-good", "2", golden="g", recipe="fused", actor="admin")
        assert other.passed and other.will_not_admit is None, other.reasons
        assert lc._reports(registry.detector("board-good", "2")).gate is not None

        # line1 made: the refusal names its version; gated on it, admitted
        good = next(p for p in sorted(OTHER_GOOD.iterdir()) if p.name.endswith("_temp.jpg"))
        GoldenLibrary(tmp_path / GOLDEN_DIR).create("line1", [
            candidate(_png(DEFECTIVE_BOARD, False), expected="fail", boxes=None, source="bad"),
            candidate(good.read_bytes(), expected="pass", boxes=None, source="good")],
            ["open", "short"])
        said = _refusal(lc)
        assert "not made" not in said and "Gate it again, on line1:1: " in said, said
        strict = lc.gate("deeppcb", "twin", golden="line1", recipe="fused", actor="admin")
        assert strict.passed and strict.will_not_admit is None, strict.reasons
        assert lc.activate("deeppcb", "twin", actor="admin") == {
            "forced": False, "gate_report_id": strict.id}
    finally:
        store.close()


def test_the_golden_set_setting_takes_names_only() -> None:
    from pydantic import ValidationError

    from lineside_inspect.lifecycle.config import LifecycleSettings

    for bad in ({"deeppcb": "line1\n"}, {"deeppcb": "../line1"}, {"a/b": "line1"},
                {"deeppcb": ""}, {"deeppcb": 3}):
        with pytest.raises(ValidationError, match="golden"):
            LifecycleSettings.model_validate({"gate": {"golden": bad}})
    ok = LifecycleSettings.model_validate({"gate": {"golden": {"deeppcb": "line1"}}})
    assert ok.gate.golden == {"deeppcb": "line1"}
    assert LifecycleSettings().gate.golden == {}
