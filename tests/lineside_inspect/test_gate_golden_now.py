"""Session 47: a gate pass admits only on its golden set as it stands. Until then a pass
on version 1 of a set admitted a version after the set grew (version 2: the parts a QA
lead added because the line met them), was made again with other images, or was gone
(docs/lifecycle.md's "Not closed"). Real parts: the bundled detector and its twin, the
tiny good-only partner of test_gate_fused.py, a real SQLite store."""

from __future__ import annotations

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
