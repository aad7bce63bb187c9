"""Schemathesis against the fleet hub's own OpenAPI schema: every operation, as each role.

What ``test_fuzz_api.py`` does for the edge server, for the hub: a real hub on loopback
(``create_hub_app`` under uvicorn with the server's connection limits, records on SQLite,
images and packages in a real SeaweedFS, keys on) is fuzzed with requests generated from
its schema, valid and invalid (positive and negative modes, the coverage phase included),
as an admin, a reviewer and a box. Every answer must not be a 5xx, must match the schema
where the schema declares that status, must have a content type the schema lists for it,
and (a check the edge's run has not) must hold no traceback and no folder of the run.
``LINESIDE_FUZZ_EXAMPLES`` sets the examples per operation (small under ``make test``,
hundreds under ``make fuzz``).

Before the fuzzing the hub holds a forwarded inspection of ``box1`` with its image, a
signed package (the bundled ``deeppcb`` ``1-int8``) and its assignment to ``line1``. A
generated name or id would almost never be one of these, so every other case has its
valid path parameters (and a valid ``version`` in a body) replaced by them: the routes
then answer from real rows and objects, not only 404. A box's routes answer 403 to any
box id but the key's own, so for the box role a valid box id is always the key's.

The schema is built from a hub app made at import (nothing started: its lock is
released at once), because schemathesis parametrizes at collection time;
``test_schema_is_the_served_one`` checks it is the one the running hub serves.

Nothing is excluded: the hub has no endless route (a package download ends with the
package). State-changing calls (publishing, assigning, reviews, status reports) do run:
the hub is thrown away after.
"""

from __future__ import annotations

import base64
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from schemathesis import GenerationMode

from lineside_inspect.config import ApiKey
from lineside_inspect.fleet import archive, signing
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.models import SIGNATURE_HEADER
from lineside_inspect.fleet.protocol import ID_PATTERN, NAME_PATTERN
from lineside_inspect.package import load_package
from lineside_inspect.serve import uvicorn_config

from .conftest import ROOT
from .fleet_peers import free_port
from .fuzz_checks import CHECKS, EXAMPLES

BOX = "box1"
# the hub's roles: a box key is named after its box
KEYS = {"admin": "hub-admin-secret", "reviewer": "hub-reviewer-secret", BOX: "hub-box1-secret"}
ROLES = {"admin": "admin", "reviewer": "reviewer", BOX: "box"}
RAN: Counter[str] = Counter()  # examples sent per role, printed when the hub stops
# what no answer may hold: a traceback, or a folder of this run (the hub's, weed's)
LEAKS: list[bytes] = [b"Traceback (most recent call", b'File "/', b"site-packages"]


def no_leak(ctx: Any, response: Any, case: Any) -> None:
    """Beyond the edge's checks: an answer names no traceback and no folder of the hub."""
    for leak in LEAKS:
        assert leak not in response.content, f"the answer holds {leak!r}"
_NAME = re.compile(NAME_PATTERN)
_ID = re.compile(ID_PATTERN)
PACKAGE = ROOT / "models" / "deeppcb" / "1-int8"  # the smallest real package
MODEL, VERSION, LINE = "deeppcb", "1-int8", "line1"
# a 1x1 PNG: the forwarded inspection's image
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB"
                       "SK+kcQAAAABJRU5ErkJggg==")


def _settings(tmp: Path, objects: dict[str, Any], port: int) -> HubSettings:
    keys = [ApiKey.from_plain(name, ROLES[name], key) for name, key in KEYS.items()]  # type: ignore[arg-type]
    return HubSettings(database_url=f"sqlite:///{tmp / 'hub.db'}", data_dir=str(tmp),
                       objects=objects, api_keys=keys, port=port)


def _openapi() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lineside-hub-schema-") as tmp:
        objects = {"endpoint": "127.0.0.1:9", "bucket": "schema", "access_key": "a",
                   "secret_key": "s", "secure": False}
        app = create_hub_app(_settings(Path(tmp), objects, 8100))
        try:
            return app.openapi()
        finally:
            for hook in reversed(app.state.on_shutdown):  # never started: drops the lock
                hook()


SCHEMA_DOC = _openapi()
# the package archive of PUT /fleet/v1/packages/{model}/{version}: sent as bytes
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
schema = schemathesis.openapi.from_dict(SCHEMA_DOC)
OPERATIONS = sum(1 for _ in schema.get_all_operations())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                max_examples=EXAMPLES, database="none")


class Hub:
    """A hub under uvicorn (the server's connection limits) in a thread, on loopback."""

    def __init__(self, settings: HubSettings) -> None:
        self.app = create_hub_app(settings)
        self.url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn_config(self.app, settings.server_settings(), host="127.0.0.1",
                                port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.server.started and self.app.state.ready):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the hub did not start")
            time.sleep(0.05)

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {KEYS[role]}"})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def forwarded(seq: int) -> dict[str, Any]:
    """One forwarded inspection of box1, as its forwarder sends it, with its image."""
    iid = uuid.uuid4().hex
    record = {
        "id": iid, "created_at": datetime.now(UTC).isoformat(), "verdict": "fail",
        "reasons": [{"rule": "critical", "label": "short", "count": 1, "allowed": 0,
                     "message": "1 short"}],
        "defects": [{"label": "short", "score": 0.9, "box": [0.0, 0.0, 1.0, 1.0]}],
        "recipe": {"name": "deeppcb", "version": "1"},
        "model": {"name": "deeppcb", "version": "1", "sha256": "0" * 64},
        "camera_id": "cam1", "part_id": "SN1",
        "timings_ms": {"decode": 1, "preprocess": 1, "infer": 1, "postprocess": 1, "total": 4},
        "reference": None, "stored": True, "box_id": BOX, "class_names": ["short", "open"],
        "width": 1, "height": 1, "has_image": True, "review_state": "unreviewed"}
    return {"seq": seq, "id": iid, "site": "plant1", "line": "line1", "record": record,
            "image_b64": base64.b64encode(PNG).decode(), "image_ext": "png"}


def seed(hub: Hub) -> dict[str, str]:
    """What the hub holds before the fuzzing: box1's inspection, a signed package and its
    assignment to LINE; the path parameters they give (see ``test_every_operation``)."""
    item = forwarded(1)
    with hub.client(BOX) as c:
        r = c.post(f"/fleet/v1/boxes/{BOX}/inspections", json={"items": [item]})
        assert r.status_code == 200, r.text
    data = archive.pack(PACKAGE)
    card = load_package(PACKAGE).card
    assert (card.name, card.version) == (MODEL, VERSION)
    sig = signing.sign(signing.Ed25519PrivateKey.generate(), MODEL, VERSION,
                       archive.sha256_bytes(data))
    with hub.client("admin") as c:
        r = c.put(f"/fleet/v1/packages/{MODEL}/{VERSION}", content=data,
                  headers={SIGNATURE_HEADER: base64.b64encode(sig).decode()})
        assert r.status_code == 201, r.text
        r = c.put(f"/fleet/v1/lines/{LINE}/models/{MODEL}", json={"version": VERSION})
        assert r.status_code == 200, r.text
    return {"inspection_id": item["id"], "box_id": BOX, "model": MODEL, "version": VERSION,
            "line": LINE}


@pytest.fixture(scope="module")
def fuzzed_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               weed: Any) -> Iterator[Hub]:
    hub = Hub(_settings(tmp_path_factory.mktemp("fuzz-hub"), weed.settings("fleet-fuzz"),
                        free_port()))
    LEAKS.append(str(tmp_path_factory.getbasetemp()).encode())
    hub.app.state.seeded = seed(hub)
    yield hub
    hub.stop()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None and RAN:  # the figures docs/security.md records, past the capture
        with capture.global_and_fixture_disabled():
            print(f"\nschemathesis (hub): {OPERATIONS} operations, requests sent per role "
                  f"{dict(RAN)} ({EXAMPLES} examples per operation and mode, plus the "
                  "coverage phase)")


@pytest.fixture(scope="module", params=list(KEYS))
def role(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_schema_is_the_served_one(fuzzed_hub: Hub) -> None:
    with fuzzed_hub.client("reviewer") as c:
        assert c.get("/openapi.json").json() == SCHEMA_DOC


def _valid(name: str, value: object) -> bool:
    pattern = _ID if name == "inspection_id" else _NAME
    return isinstance(value, str) and pattern.fullmatch(value) is not None


@schema.parametrize()
def test_every_operation(case: Any, fuzzed_hub: Hub, role: str) -> None:
    RAN[role] += 1
    seeded = fuzzed_hub.app.state.seeded
    params = case.path_parameters or {}
    for name, value in params.items():
        own_box = name == "box_id" and ROLES[role] == "box"
        if name in seeded and _valid(name, value) and (own_box or RAN[role] % 2):
            params[name] = role if own_box else seeded[name]
    if RAN[role] % 2 and isinstance(case.body, dict) and _valid("version", case.body.get("version")):
        case.body["version"] = VERSION  # an assignment's: a published version
    case.call_and_validate(base_url=fuzzed_hub.url, checks=[*CHECKS, no_leak], timeout=30,
                           headers={"Authorization": f"Bearer {KEYS[role]}"})


def test_hub_still_answers(fuzzed_hub: Hub) -> None:
    """After the fuzzing the hub is ready and still serves what it held before, the
    inspection's image and the package byte for byte (the fuzzing may have moved box1's
    cursor anywhere: no new forward)."""
    seeded = fuzzed_hub.app.state.seeded
    with fuzzed_hub.client("reviewer") as c:
        assert c.get("/readyz").status_code == 200
        r = c.get(f"/v1/inspections/{seeded['inspection_id']}")
        assert r.status_code == 200, r.text
        assert r.json()["box_id"] == BOX
        r = c.get(f"/v1/inspections/{seeded['inspection_id']}/image")
        assert r.status_code == 200 and r.content == PNG
    with fuzzed_hub.client(BOX) as c:
        r = c.get(f"/fleet/v1/packages/{MODEL}/{VERSION}/package.tar.gz")
        assert r.status_code == 200 and r.content == archive.pack(PACKAGE)


# ---- what the fuzzing found, pinned as plain cases ---------------------------------


@pytest.mark.parametrize(("role", "method", "path"), [
    ("admin", "PUT", "/fleet/v1/boxes/0/inspections"),
    ("reviewer", "PATCH", f"/fleet/v1/boxes/{BOX}/reviews"),
    (BOX, "DELETE", f"/fleet/v1/boxes/{BOX}/status"),
    (BOX, "PUT", "/fleet/v1/boxes/bad id/inspections"),
])
def test_a_box_route_answers_another_method_405(fuzzed_hub: Hub, role: str, method: str,
                                                path: str) -> None:
    """The hub's box front answered every body method on a box path before the router: a
    PUT to the forward route was a 403 (not the box's key) or 422 (a bad box id), where
    the route does not exist for that method (405 with Allow, RFC 9110)."""
    with fuzzed_hub.client(role) as c:
        r = c.request(method, path, json={"items": []})
    assert r.status_code == 405, r.text
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"


def test_the_hubs_shadow_queue_is_empty(fuzzed_hub: Hub) -> None:
    """Shadows run on boxes: the hub's store has no shadow table, and ``queue=shadow`` was
    a 500 (see test_lifecycle_records.py for the store's side)."""
    with fuzzed_hub.client("reviewer") as c:
        r = c.get("/v1/inspections", params={"queue": "shadow"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0 and r.json()["items"] == []
