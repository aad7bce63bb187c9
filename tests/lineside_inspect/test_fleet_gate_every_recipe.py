"""A fleet box with ``lifecycle.gate.require_gate`` and two recipes judging the model (one
with its own minimum size, one fusing the bundled good-only model), all parts real: a
SeaweedFS object store, a ``lineside hub`` process and a ``lineside serve`` box (session
43, fleet pass). A pull is gated under every recipe that would judge it and activated
when each passes; a version failing under one recipe is refused, the box serving on, and
the hub's view of the box names that recipe and why (it named a report id only); a box
without a golden set named after the model says so first, within the 500 characters the
hub keeps (it was cut off); a recipe put again after a pass makes the next activation
refuse it as stale, named."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from lineside_inspect.lifecycle.golden import GOLDEN_DIR, GoldenLibrary, from_dataset
from lineside_inspect.package import load_package, write_card

from .conftest import MODEL, ROOT, SAMPLE
from .server_process import LINESIDE, ServerProcess, free_port
from .test_fleet_models_e2e import ADMIN, active, fleet, hub_process, wait_for
from .test_fleet_models_hub import versioned

GOOD = ROOT / "models" / "deeppcb-good" / "1"
FUSED = ROOT / "configs" / "recipes" / "deeppcb-fused.yaml"  # judges deeppcb with GOOD


def _deaf(tmp: Path, version: str) -> Path:
    """A version whose card's thresholds are 0.99: it passes the golden set's defective
    parts under a recipe that takes the card's thresholds (line), not under the fused one
    (the good-only model flags them)."""
    dest = versioned(tmp, version)
    card = load_package(dest).card
    write_card(dest, card.model_copy(update={"thresholds": dict.fromkeys(card.thresholds,
                                                                         0.99)}))
    return dest


def _errors(hub: ServerProcess) -> list[str]:
    """The box's model_errors as the hub shows them."""
    r = httpx.get(hub.url + "/fleet/v1/boxes", timeout=5,
                  headers={"authorization": f"Bearer {ADMIN}"})
    status = r.json()["boxes"][0]["status"] if r.status_code == 200 else None
    return list(status["model_errors"]) if status else []


def _said(hub: ServerProcess, version: str) -> str:
    """What the hub shows of the box's refusal of ``version``, once it shows one."""
    found: str = wait_for(lambda: next((e for e in _errors(hub)
                                        if e.startswith(f"deeppcb {version}: ")), None),
                          f"the hub showing the box's refusal of {version}")
    assert "Traceback" not in found and str(ROOT) not in found, found
    return found


def test_a_box_gates_a_pull_under_every_recipe_and_tells_the_hub_which_failed(
        weed: Any, tmp_path: Path) -> None:
    hub = hub_process(weed, tmp_path, ("box-a",), f"every-{uuid.uuid4().hex[:10]}")
    data = tmp_path / "box-a"
    data.mkdir()
    items, classes = from_dataset(SAMPLE, limit=4)
    golden = GoldenLibrary(data / GOLDEN_DIR)
    golden.create("deeppcb", items, classes)
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(
        {"name": "line", "model": "deeppcb", "min_size_px": 4}))
    port = free_port()
    (tmp_path / "box-a.yaml").write_text(yaml.safe_dump({
        "models": [str(MODEL), str(GOOD)], "device": "cpu", "threads": 1,
        "data_dir": str(data), "box_id": "box-a", "port": port,
        "recipes": [str(tmp_path / "line.yaml"), str(FUSED)],
        "lifecycle": {"gate": {"require_gate": True}},
        "fleet": {"hub_url": hub.url, "token": "box-a-key", "site": "plant1", "line": "L1",
                  "trusted_keys": [str(tmp_path / "publisher.pub.pem")],
                  "pull_interval_s": 0.3, "status_interval_s": 0.5, "timeout_s": 5}}))
    box = ServerProcess([*LINESIDE, "serve", "--config", str(tmp_path / "box-a.yaml")],
                        tmp_path / "box-a.log", port, new_session=True)
    key = str(tmp_path / "publisher.pem")

    def assign(version: str, folder: Path | None = None) -> None:
        if folder is not None:
            fleet("publish", str(folder), "--hub", hub.url, "--key", key)
        fleet("assign", "--hub", hub.url, "--line", "L1", "--model", "deeppcb", "--version",
              version)

    try:
        for p in (hub, box):
            p.start()
            p.wait_ready()
        # every recipe passes: gated under each, promoted
        assign("2", versioned(tmp_path, "2"))
        wait_for(lambda: active(box)[0] == "2", "box-a promoting 2")
        audit = httpx.get(box.url + "/v1/audit", params={"model": "deeppcb"}).json()["items"]
        gates = httpx.get(box.url + "/v1/models/deeppcb/gates").json()["items"]
        assert sorted((g["recipe"], g["passed"]) for g in gates) == [
            ("deeppcb-fused", True), ("line", True)]
        assert any(a["action"] == "promote" and a["actor"] == "fleet" for a in audit)

        # failing under line, passing under deeppcb-fused: refused, 2 serves on, and the
        # hub is told which recipe and why
        assign("3", _deaf(tmp_path, "3"))
        said = _said(hub, "3")
        assert ("deeppcb 3 failed its gate under 1 of 2 recipe(s) that would judge it, on "
                "golden set deeppcb:1: recipe line (report ") in said, said
        assert "2 escape(s) on the golden set" in said and "(passed under deeppcb-fused)" in said
        assert active(box)[0] == "2"

        # no golden set named after the model: said first, with the recipes lacking a pass
        shutil.rmtree(data / GOLDEN_DIR / "deeppcb")
        golden.create("plant", items, classes)
        assign("4", versioned(tmp_path, "4"))
        said = _said(hub, "4")
        assert said.startswith("deeppcb 4: this box keeps no golden set named deeppcb, the only "
                               "one a pull gates with"), said
        assert "recipe(s) deeppcb-fused, line" in said
        assert active(box)[0] == "2"

        # gated on the box under both, then line put again with another minimum size: the
        # next activation of 4 (the assignment back to it) refuses the stale pass, named
        r = httpx.post(box.url + "/v1/models/deeppcb/gate", timeout=120,
                       json={"version": "4", "golden": "plant", "recipe": "*"})
        assert r.status_code == 200 and r.json()["passed"], r.text
        r = httpx.put(box.url + "/v1/recipes/line", timeout=10,
                      json={"name": "line", "version": "2", "model": "deeppcb", "min_size_px": 6})
        assert r.status_code == 200, r.text
        assign("2")
        wait_for(lambda: not any(e.startswith("deeppcb 4") for e in _errors(hub)),
                 "the refusal of 4 dropped with its assignment")
        assign("4")
        said = wait_for(lambda: next((e for e in _errors(hub) if "was judged under recipe line "
                                      "by rules" in e), None), "the stale pass refused")
        assert "other than the recipe's now" in said, said
        assert active(box)[0] == "2"
    finally:
        for p in (hub, box):
            p.stop()
