"""The typed contract: what ``/openapi.json`` declares, checked against a real server.

Every operation under ``/v1`` and ``/v2`` (and the probes) declares what its success
sends: a JSON schema naming a model, or the media types of an image or stream. Every
error it declares is the server's one error shape, FastAPI's own validation schema
(which the server never sends) nowhere. And for a set of real calls the answer validates
against the very model the schema declares for its status.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
from pydantic import TypeAdapter

from lineside_inspect.config import CameraConfig
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.recipes.schema import Recipe, RecipeRegions
from lineside_inspect.schemas import InspectionDetail, InspectionResult, TimeText
from lineside_inspect.server.responses import (
    CameraHealth,
    DashboardStats,
    ErrorBody,
    Health,
    InferResponse,
    ListedRecipe,
    Liveness,
    LoadedModel,
    ModelMetadata,
    ModelReadiness,
    OipErrorBody,
    Readiness,
    ReferenceList,
    ServerMetadata,
    StoredReference,
)

from .conftest import MODEL, SAMPLE, Running, keyed, start_server

PASSWORD = "s3cret-pw"
RTSP = f"rtsp://viewer:{PASSWORD}@127.0.0.1:9/live"  # nothing listens: the camera goes offline
READINESS = {"/readyz", "/v2/health/ready"}  # their 503 is the readiness shape, not an error
METHODS = {"get", "post", "put", "patch", "delete"}

# operationIds: what generated clients name their functions (and inline enums) after, so
# a change breaks integrators' code. They were FastAPI's (list_inspections_v1_inspections_get,
# changing with a path or method); now each route's function name, pinned here.
EDGE_OPERATIONS = {
    "GET /healthz": "healthz",
    "GET /metrics": "metrics",
    "GET /readyz": "readyz",
    "GET /v1/alarms": "alarms",
    "POST /v1/alarms/{recipe}/relearn": "relearn",
    "GET /v1/audit": "audit",
    "GET /v1/cameras": "list_cameras",
    "GET /v1/cameras/{camera_id}/snapshot": "snapshot",
    "GET /v1/cameras/{camera_id}/stream": "stream",
    "POST /v1/cameras/{camera_id}/trigger": "trigger",
    "GET /v1/gates/{report_id}": "gate_report",
    "GET /v1/golden": "list_golden",
    "GET /v1/golden/{name}": "get_golden",
    "POST /v1/golden/{name}": "add_golden",
    "POST /v1/inspect": "inspect",
    "GET /v1/inspections": "list_inspections",
    "GET /v1/inspections/{inspection_id}": "get_inspection",
    "GET /v1/inspections/{inspection_id}/annotated": "annotated_image",
    "GET /v1/inspections/{inspection_id}/image": "original_image",
    "GET /v1/inspections/{inspection_id}/reference": "reference_image",
    "POST /v1/inspections/{inspection_id}/reviews": "add_review",
    "GET /v1/inspections/{inspection_id}/shadow": "inspection_shadow",
    "GET /v1/models": "list_models",
    "POST /v1/models": "load_model",
    "POST /v1/models/{name}/activate": "activate",
    "POST /v1/models/{name}/gate": "gate",
    "GET /v1/models/{name}/gates": "gate_reports",
    "GET /v1/models/{name}/lineage": "lineage",
    "POST /v1/models/{name}/promote": "promote",
    "POST /v1/models/{name}/rollback": "rollback",
    "DELETE /v1/models/{name}/versions/{version}": "unload_version",
    "GET /v1/models/{name}/rollout": "rollout",
    "DELETE /v1/models/{name}/shadow": "stop_shadow",
    "GET /v1/models/{name}/shadow": "shadow_status",
    "POST /v1/models/{name}/shadow": "start_shadow",
    "GET /v1/overview": "get_overview",
    "GET /v1/queues": "queues",
    "GET /v1/recipes": "list_recipes",
    "DELETE /v1/recipes/{name}": "delete_recipe",
    "GET /v1/recipes/{name}": "get_recipe",
    "PUT /v1/recipes/{name}": "put_recipe",
    "GET /v1/recipes/{name}/regions": "recipe_regions",
    "GET /v1/references": "list_references",
    "DELETE /v1/references/{name}": "delete_reference",
    "GET /v1/references/{name}": "get_reference",
    "PUT /v1/references/{name}": "put_reference",
    "GET /v1/reviewers": "reviewer_counts",
    "GET /v1/reviews": "review_log",
    "GET /v1/stats": "stats",
    "GET /v1/stats.csv": "stats_csv",
    "GET /v2": "server_metadata",
    "GET /v2/health/live": "live",
    "GET /v2/health/ready": "ready",
    "GET /v2/models/{name}": "model_metadata",
    "POST /v2/models/{name}/infer": "infer",
    "GET /v2/models/{name}/ready": "model_ready",
    "GET /v2/models/{name}/versions/{version}": "model_version_metadata",
    "POST /v2/models/{name}/versions/{version}/infer": "infer_version",
    "GET /v2/models/{name}/versions/{version}/ready": "model_version_ready",
}
HUB_OPERATIONS = {
    "GET /fleet/v1/boxes": "list_boxes",
    "GET /fleet/v1/boxes/{box_id}/assignment": "box_assignment",
    "GET /fleet/v1/boxes/{box_id}/hub-reviews": "reviews_down",
    "POST /fleet/v1/boxes/{box_id}/inspections": "forward",
    "POST /fleet/v1/boxes/{box_id}/reviews": "reviews_up",
    "POST /fleet/v1/boxes/{box_id}/status": "report_status",
    "GET /fleet/v1/lines/{line}/assignment": "line_assignment",
    "DELETE /fleet/v1/lines/{line}/models/{model}": "unassign",
    "PUT /fleet/v1/lines/{line}/models/{model}": "assign",
    "GET /fleet/v1/packages": "list_packages",
    "PUT /fleet/v1/packages/{model}/{version}": "publish",
    "GET /fleet/v1/packages/{model}/{version}/package.sig": "get_signature",
    "GET /fleet/v1/packages/{model}/{version}/package.tar.gz": "get_package",
    "GET /healthz": "healthz",
    "GET /metrics": "metrics",
    "GET /readyz": "readyz",
    "GET /v1/inspections": "list_inspections",
    "GET /v1/inspections/{inspection_id}": "get_inspection",
    "GET /v1/inspections/{inspection_id}/annotated": "annotated_image",
    "GET /v1/inspections/{inspection_id}/image": "original_image",
    "GET /v1/inspections/{inspection_id}/reference": "reference_image",
    "POST /v1/inspections/{inspection_id}/reviews": "add_review",
    "GET /v1/overview": "get_overview",
    "GET /v1/reviewers": "reviewer_counts",
    "GET /v1/reviews": "review_log",
    "GET /v1/stats": "stats",
    "GET /v1/stats.csv": "stats_csv",
}
# enums with a name of their own (schemas.py): one component each, never inlined again
NAMED_ENUMS = {"Verdict": ["pass", "fail"],
               "ReviewAction": ["confirm", "false_reject", "missed_defect", "relabel", "remove_box"],
               "Precision": ["fp32", "fp16", "int8"]}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Running, dict[str, Any]]]:
    cams = [CameraConfig(id="sim", source=str(SAMPLE / "images"), fps=10),
            CameraConfig(id="door", source=RTSP, open_timeout_s=0.5)]
    running, stop = start_server(keyed(cameras=cams))
    with running.client() as c:
        doc = c.get("/openapi.json").json()
    yield running, doc
    stop()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        if path.startswith(("/v1/", "/v2/")) or path in ("/v2", "/healthz", "/readyz"):
            for method, op in item.items():
                if method in METHODS:
                    yield method.upper(), path, op


def _refs(schema: Any) -> set[str]:
    """The component names a schema references directly (through arrays and unions)."""
    if isinstance(schema, dict):
        own = {schema["$ref"].rsplit("/", 1)[-1]} if "$ref" in schema else set()
        return own.union(*(_refs(v) for k, v in schema.items() if k != "$ref"))
    if isinstance(schema, list):
        return set().union(*(_refs(v) for v in schema))
    return set()


def _reach(doc: dict[str, Any], names: set[str]) -> set[str]:
    """``names`` and every component they reference, transitively."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(doc["components"]["schemas"][name]))
    return seen


def test_every_operation_declares_what_it_sends(served: tuple[Running, dict[str, Any]]) -> None:
    _, doc = served
    problems = []
    ops = list(_operations(doc))
    assert len(ops) > 25  # the walk found the API
    for method, path, op in ops:
        where = f"{method} {path}"
        responses = op["responses"]
        if "204" in responses:
            if responses["204"].get("content"):
                problems.append(f"{where}: a 204 with a body")
            continue
        content = responses.get("200", {}).get("content", {})
        if not content:
            problems.append(f"{where}: no 200 content declared")
        for media, spec in content.items():
            schema = spec.get("schema", {})
            if media == "application/json":
                if not _refs(schema):  # {} or a free-form object says nothing
                    problems.append(f"{where}: 200 JSON without a model: {schema}")
            elif not media.startswith(("image/", "multipart/", "text/")):
                problems.append(f"{where}: 200 of an unexpected media type {media}")
            elif not schema:  # a generated client had nothing to read the JPEG as
                problems.append(f"{where}: 200 {media} without a schema")
    assert not problems, "\n".join(problems)


def test_every_error_is_the_error_shape(served: tuple[Running, dict[str, Any]]) -> None:
    _, doc = served
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorBody"]["required"]) == {"error"}
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message"}
    problems = []
    for method, path, op in _operations(doc):
        where = f"{method} {path}"
        errs = {s: r for s, r in op["responses"].items() if s[0] in "45" or s == "default"}
        # the catch-all keeps FastAPI's own 422 out and says what any other 4xx looks like
        if "4XX" not in errs or "500" not in errs:
            problems.append(f"{where}: declares errors {sorted(errs)}, without 4XX or 500")
        for status, response in errs.items():
            # /v2 answers errors in the Open Inference Protocol's shape (oip_errors.py)
            want = "Readiness" if status == "503" and path in READINESS else \
                "OipErrorBody" if path.startswith("/v2") else "ErrorBody"
            named = [_refs(spec.get("schema", {})) for spec in response.get("content", {}).values()]
            if named != [{want}]:
                problems.append(f"{where}: {status} is {named}, not {want}")
    assert not problems, "\n".join(problems)
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def _declared(doc: dict[str, Any], method: str, path: str, status: int) -> set[str]:
    response = doc["paths"][path][method.lower()]["responses"][str(status)]
    return _refs(response["content"]["application/json"]["schema"])


def _date_time(value: object) -> bool:
    # jsonschema checks "date-time" only with rfc3339-validator, not installed here
    return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date-time", raises=ValueError)(_date_time)


def _validate(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """``body`` against the JSON schema ``doc`` declares for the answer (what a generated
    client parses by), its components resolved in ``doc`` and its date-times checked."""
    schema = doc["paths"][path][method.lower()]["responses"][str(status)]["content"][
        "application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(
        {**schema, "components": doc["components"]}, format_checker=FORMATS)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(body)]
    assert not errors, (method, path, errors[:5])


def _binary_infer(size: int) -> tuple[bytes, dict[str, str]]:
    count = 3 * size * size
    head = json.dumps({"id": "c1", "inputs": [{
        "name": "images", "datatype": "UINT8", "shape": [1, 3, size, size],
        "parameters": {"binary_data_size": count}}]}).encode()
    return head + bytes(count), {"Inference-Header-Content-Length": str(len(head)),
                                 "Content-Type": "application/octet-stream"}


def test_answers_validate_against_their_declared_models(
        served: tuple[Running, dict[str, Any]], image_bytes: bytes) -> None:
    srv, doc = served
    infer_body, infer_headers = _binary_infer(640)
    jpeg = {"content": image_bytes, "headers": {"Content-Type": "image/jpeg"}}
    # (role, method, url, the path as the schema names it, kwargs, status, model)
    calls: list[tuple[str | None, str, str, str, dict[str, Any], int, Any]] = [
        ("line", "POST", "/v1/inspect", "/v1/inspect", jpeg, 200, InspectionResult),
        ("admin", "GET", "/v1/models", "/v1/models", {}, 200, list[LoadedModel]),
        ("admin", "GET", "/v1/recipes", "/v1/recipes", {}, 200, list[ListedRecipe]),
        ("admin", "GET", "/v1/recipes/deeppcb-default", "/v1/recipes/{name}", {}, 200, Recipe),
        ("reviewer", "GET", "/v1/recipes/deeppcb-default/regions",
         "/v1/recipes/{name}/regions", {},
         200, RecipeRegions),
        ("admin", "PUT", "/v1/references/board", "/v1/references/{name}", jpeg, 200, StoredReference),
        ("line", "GET", "/v1/references", "/v1/references", {}, 200, ReferenceList),
        ("reviewer", "GET", "/v1/cameras", "/v1/cameras", {}, 200, list[CameraHealth]),
        ("reviewer", "GET", "/v1/stats", "/v1/stats", {}, 200, DashboardStats),
        (None, "GET", "/healthz", "/healthz", {}, 200, Health),
        (None, "GET", "/readyz", "/readyz", {}, 200, Readiness),
        (None, "GET", "/v2", "/v2", {}, 200, ServerMetadata),
        (None, "GET", "/v2/health/live", "/v2/health/live", {}, 200, Liveness),
        (None, "GET", "/v2/health/ready", "/v2/health/ready", {}, 200, Readiness),
        ("line", "GET", "/v2/models/deeppcb", "/v2/models/{name}", {}, 200, ModelMetadata),
        ("line", "GET", "/v2/models/deeppcb/ready", "/v2/models/{name}/ready", {}, 200,
         ModelReadiness),
        ("line", "POST", "/v2/models/deeppcb/infer", "/v2/models/{name}/infer",
         {"content": infer_body, "headers": infer_headers}, 200, InferResponse),
        # errors, as each route declares them
        (None, "GET", "/v1/models", "/v1/models", {}, 401, ErrorBody),
        ("line", "GET", "/v1/models", "/v1/models", {}, 403, ErrorBody),
        ("admin", "POST", "/v1/models/deeppcb/rollback", "/v1/models/{name}/rollback", {}, 422,
         ErrorBody),
        ("admin", "POST", "/v1/models/deeppcb/activate", "/v1/models/{name}/activate",
         {"json": {"version": 9}}, 422, ErrorBody),  # FastAPI's validation, in our shape
        # ... a missing key's hint (its description) too (session 47)
        ("admin", "POST", "/v1/models/deeppcb/promote", "/v1/models/{name}/promote",
         {"json": {"version": "2"}}, 422, ErrorBody),
        ("reviewer", "GET", "/v1/stats?hours=0", "/v1/stats", {}, 422, ErrorBody),
        ("admin", "GET", "/v1/recipes/nope", "/v1/recipes/{name}", {}, 404, ErrorBody),
        (None, "GET", "/v2/models/deeppcb", "/v2/models/{name}", {}, 401, OipErrorBody),
        ("line", "GET", "/v2/models/nope", "/v2/models/{name}", {}, 404, OipErrorBody),
        ("reviewer", "GET", "/v1/cameras/door/snapshot", "/v1/cameras/{camera_id}/snapshot", {},
         503, ErrorBody),
    ]
    for role, method, url, path, kwargs, status, model in calls:
        with srv.client(role) as c:
            r = c.request(method, url, **kwargs)
        assert r.status_code == status, (method, url, r.text)
        name = (get_args(model) or (model,))[0].__name__  # list[X]: X
        assert _declared(doc, method, path, status) == {name}, (method, url)
        TypeAdapter(model).validate_json(r.content)
        _validate(doc, method, path, status, r.json())  # the schema, as a client reads it
        if url == "/v2/models/deeppcb/infer":
            got = InferResponse.model_validate_json(r.content)
            assert got.id == "c1" and [(o.name, o.datatype) for o in got.outputs] == [
                ("boxes", "FP32"), ("scores", "FP32"), ("labels", "INT64")]
            assert all(type(v) is int for v in got.outputs[2].data)
        if url == "/v1/recipes":
            assert sum(rec.default for rec in TypeAdapter(model).validate_json(r.content)) == 1


def _hub_doc() -> dict[str, Any]:
    """The hub's schema, from a hub app made and never started (as test_fuzz_hub.py's)."""
    with tempfile.TemporaryDirectory(prefix="lineside-hub-schema-") as tmp:
        objects = {"endpoint": "127.0.0.1:9", "bucket": "schema", "access_key": "a",
                   "secret_key": "s", "secure": False}
        app = create_hub_app(HubSettings(database_url=f"sqlite:///{Path(tmp) / 'hub.db'}",
                                         data_dir=tmp, objects=objects, port=8100))
        try:
            return app.openapi()
        finally:
            for hook in reversed(app.state.on_shutdown):  # never started: drops the lock
                hook()


@pytest.fixture(scope="module")
def hub_doc() -> dict[str, Any]:
    return _hub_doc()


def _operation_ids(doc: dict[str, Any]) -> dict[str, str]:
    return {f"{method.upper()} {path}": op["operationId"]
            for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS}


def test_operation_ids_are_short_unique_and_pinned(
        served: tuple[Running, dict[str, Any]], hub_doc: dict[str, Any]) -> None:
    """FastAPI's own operationIds (``get_inspection_v1_inspections__inspection_id__get``)
    became a generated client's function names and, with ``_type_0``, its query enums'
    (``ListInspectionsV1InspectionsGetVerdictType0``); they changed with any path. The
    served ones are the routes' names, the same on box and hub, and pinned: a change is
    one for every generated client (docs/upgrading.md)."""
    _, doc = served
    for served_doc, pinned in ((doc, EDGE_OPERATIONS), (hub_doc, HUB_OPERATIONS)):
        ids = _operation_ids(served_doc)
        assert len(set(ids.values())) == len(ids)
        assert ids == pinned
    shared = set(EDGE_OPERATIONS) & set(HUB_OPERATIONS)
    assert len(shared) > 10 and all(EDGE_OPERATIONS[k] == HUB_OPERATIONS[k] for k in shared)


def test_image_bodies_a_generated_client_can_send(
        served: tuple[Running, dict[str, Any]], hub_doc: dict[str, Any],
        image_bytes: bytes) -> None:
    """openapi-python-client sends application/octet-stream, JSON and forms, not image/*:
    it left ``PUT /v1/references/{name}`` (and the hub's package upload) out of the client
    whole, and ``POST /v1/inspect`` only as multipart, whose ``image`` field the schema
    did not require. The server takes octet-stream (the bytes say the format): declared,
    and sent here as a generated client sends it."""
    srv, doc = served
    bodies = {(m, p): op["requestBody"]["content"] for m, p, op in _operations(doc)
              if any(t.startswith("image/") for t in op.get("requestBody", {}).get("content", {}))}
    assert set(bodies) == {("POST", "/v1/inspect"), ("PUT", "/v1/references/{name}")}
    for content in bodies.values():
        assert content["application/octet-stream"]["schema"] == {"type": "string",
                                                                 "format": "binary"}
    assert bodies["POST", "/v1/inspect"]["multipart/form-data"]["schema"]["required"] == ["image"]
    publish = hub_doc["paths"]["/fleet/v1/packages/{model}/{version}"]["put"]["requestBody"]
    assert set(publish["content"]) == {"application/gzip", "application/octet-stream"}
    raw = {"content": image_bytes, "headers": {"Content-Type": "application/octet-stream"}}
    with srv.client("admin") as c:
        r = c.put("/v1/references/octet", **raw)
    assert r.status_code == 200, r.text
    _validate(doc, "PUT", "/v1/references/{name}", 200, r.json())
    with srv.client("line") as c:
        r = c.post("/v1/inspect", **raw)
    assert r.status_code == 200, r.text
    _validate(doc, "POST", "/v1/inspect", 200, r.json())


def _inline_enums(node: Any, where: str = "") -> Iterator[tuple[str, list[Any]]]:
    if isinstance(node, dict):
        if "enum" in node:
            yield where, node["enum"]
        for key, value in node.items():
            yield from _inline_enums(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _inline_enums(value, f"{where}/{i}")


def _properties(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name, schema in doc["components"]["schemas"].items():
        for prop, spec in schema.get("properties", {}).items():
            yield name, prop, spec


def test_one_shape_one_name_and_no_free_strings(
        served: tuple[Running, dict[str, Any]], hub_doc: dict[str, Any]) -> None:
    """A verdict was an inline enum in each of six models and a query, so a generated
    client had six enum types for pass/fail (``InspectionResultVerdict``,
    ``StoredInspectionVerdict``, ...) that do not compare; the same for review actions.
    A model's precision was a free string (gate reports, the hub's manifests) where
    /v1/models had the enum, and gate reports' and golden sets' ``created_at`` a bare
    string where every other time is a date-time."""
    _, doc = served
    for d in (doc, hub_doc):
        schemas = d["components"]["schemas"]
        for name, values in NAMED_ENUMS.items():
            if name in schemas:
                assert schemas[name] == {"type": "string", "enum": values}
        named = {tuple(v) for v in NAMED_ENUMS.values()}
        again = [w for w, values in _inline_enums(d)
                 if tuple(values) in named and w.rsplit("/", 1)[-1] not in NAMED_ENUMS]
        assert not again, again
        for model, prop, spec in _properties(d):
            options = spec.get("anyOf", [spec])
            if prop == "precision":
                assert any(o.get("$ref") == "#/components/schemas/Precision"
                           for o in options), (model, spec)
            if prop.endswith("_at"):
                assert any(o.get("format") == "date-time" for o in options), (model, prop)
    assert {"Verdict", "ReviewAction", "Precision"} <= set(doc["components"]["schemas"])
    assert "Precision" in hub_doc["components"]["schemas"]


def test_golden_and_gate_times_are_date_times(
        served: tuple[Running, dict[str, Any]], image_bytes: bytes) -> None:
    """Real golden-set and gate answers validate against their schema, the date-times
    checked as date-times."""
    srv, doc = served
    with srv.client("line") as c:
        r = c.post("/v1/inspect", content=image_bytes, headers={"Content-Type": "image/jpeg"})
    inspection = InspectionResult.model_validate_json(r.content)
    with srv.client("reviewer") as c:
        r = c.post(f"/v1/inspections/{inspection.id}/reviews", json={"action": "confirm"})
        assert r.status_code == 200, r.text
        InspectionDetail.model_validate_json(r.content)
        _validate(doc, "POST", "/v1/inspections/{inspection_id}/reviews", 200, r.json())
    with srv.client("admin") as c:
        r = c.post("/v1/golden/contract", json={"inspections": [inspection.id]})
        assert r.status_code == 200, r.text
        _validate(doc, "POST", "/v1/golden/{name}", 200, r.json())
        r = c.get("/v1/golden")
        assert r.status_code == 200 and r.json()["items"], r.text
        _validate(doc, "GET", "/v1/golden", 200, r.json())
    with pytest.raises(ValueError, match="UTC offset"):
        TypeAdapter(TimeText).validate_python("2026-12-05T10:00:00")


def test_one_inspection_says_what_data_pull_does_with_it(
        served: tuple[Running, dict[str, Any]], hub_doc: dict[str, Any]) -> None:
    """The review page reads whether `data pull` leaves an inspection out from the API (its
    ``pull``), on a box and on a hub alike (session 51): declared, required, kept and reason
    typed, on the one inspection's answer and the review's; not on the list's items (a data
    pull of a release before it refuses a field it does not know)."""
    _, doc = served
    for d in (doc, hub_doc):
        for method, path in (("get", "/v1/inspections/{inspection_id}"),
                             ("post", "/v1/inspections/{inspection_id}/reviews")):
            ok = d["paths"][path][method]["responses"]["200"]["content"]["application/json"]
            assert ok["schema"] == {"$ref": "#/components/schemas/InspectionDetail"}, path
        schemas = d["components"]["schemas"]
        assert "pull" in schemas["InspectionDetail"]["required"]
        assert schemas["PullNote"]["properties"]["kept"]["type"] == "boolean"
        assert {"type": "null"} in schemas["PullNote"]["properties"]["reason"]["anyOf"]
        assert "pull" not in schemas["StoredInspection"]["properties"]


def test_package_folders_are_for_admins_only(served: tuple[Running, dict[str, Any]]) -> None:
    """The model list names each package's folder on the server: the only answer that
    does, and only to admins."""
    srv, doc = served
    with_path = {n for n, s in doc["components"]["schemas"].items()
                 if "path" in s.get("properties", {})}
    # answers (versions loaded, and unloaded ones' packages), and the load request
    assert with_path == {"LoadedVersion", "UnloadedVersion", "LoadModel"}
    reaching = [f"{m} {p}" for m, p, op in _operations(doc)
                if {"LoadedVersion", "UnloadedVersion"}
                & _reach(doc, _refs(op["responses"].get("200", {})))]
    assert reaching == ["GET /v1/models"]
    for role in ("line", "reviewer"):
        with srv.client(role) as c:
            assert c.get("/v1/models").status_code == 403
    with srv.client("admin") as c:
        versions = c.get("/v1/models").json()[0]["versions"]
    assert versions[0]["path"] == str(MODEL)


def test_camera_health_hides_url_passwords(served: tuple[Running, dict[str, Any]]) -> None:
    """A reviewer reads camera health (and the dashboard, which carries it): an RTSP URL's
    password in the source, or quoted by the open error, is not for them."""
    srv, _ = served
    with srv.client("reviewer") as c:
        deadline = time.monotonic() + 20
        while True:
            health = {h["id"]: h for h in c.get("/v1/cameras").json()}
            if health["door"]["last_error"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        door = health["door"]
        assert door["state"] == "offline" and "viewer:***@127.0.0.1" in door["last_error"]
        assert door["source"] == "rtsp://viewer:***@127.0.0.1:9/live"
        stats = c.get("/v1/stats")
    assert stats.status_code == 200 and stats.json()["cameras"]
    # a trigger's 503 quoted the open error unmasked (and the PLC logged it so)
    with srv.client("line") as c:
        trigger = c.post("/v1/cameras/door/trigger")
    assert trigger.status_code == 503 and "viewer:***@127.0.0.1" in trigger.text, trigger.text
    for text in (json.dumps(health), stats.text, trigger.text):
        assert PASSWORD not in text


def test_inspect_documents_its_query_parameters(served: tuple[Running, dict[str, Any]]) -> None:
    """``POST /v1/inspect`` parses its query by hand (the hot path); /docs still lists each
    parameter with its limits, as FastAPI would for declared ones."""
    _, doc = served
    params = {p["name"]: p for p in doc["paths"]["/v1/inspect"]["post"]["parameters"]}
    assert set(params) == {"recipe", "camera_id", "part_id", "annotated", "reference"}
    assert all(p["in"] == "query" and not p["required"] for p in params.values())
    camera = next(s for s in params["camera_id"]["schema"]["anyOf"] if s["type"] == "string")
    assert camera["maxLength"] == 128 and camera["pattern"].startswith("^[A-Za-z0-9]")
    assert params["annotated"]["schema"]["type"] == "boolean"
    assert "recipe name" in params["recipe"]["description"]


@pytest.mark.parametrize(("source", "shown"), [
    ("rtsp://u:p@ss@cam/live", "rtsp://u:***@cam/live"),  # a raw '@' in the password
    ("rtsp://u:sec/ret@cam", "rtsp://u:***@cam"),  # a raw '/': it was shown whole
    ("rtspsrc location=rtsp://a:b@cam/s ! decodebin", "rtspsrc location=rtsp://a:***@cam/s ! decodebin"),
    ("rtsp://admin@site:secret@10.0.0.5/stream", "rtsp://***@site:***@10.0.0.5/stream"),
    ("rtsp://admin:pa ss@cam/s", "rtsp://admin:***@cam/s"),  # a space: it was shown whole
    ("http://cam/v.cgi?user=admin&pwd=S3cret&x=1", "http://cam/v.cgi?user=admin&pwd=***&x=1"),
    ("http://cam/snap?Password=a;token=b", "http://cam/snap?Password=***;token=***"),
    ("http://cam/video.mjpg?resolution=640", "http://cam/video.mjpg?resolution=640"),
    # GStreamer properties, quoted or not, and other cameras' query keys
    ("rtspsrc location=rtsp://cam/s user-id=admin user-pw=s3 ! x",
     "rtspsrc location=rtsp://cam/s user-id=admin user-pw=*** ! x"),
    ('rtspsrc user-pw="a b" location=x', "rtspsrc user-pw=*** location=x"),
    ("http://cam/v.cgi?pw=a&psw=b&loginpas=c&x=1", "http://cam/v.cgi?pw=***&psw=***&loginpas=***&x=1"),
    ("rtsp://cam/live", "rtsp://cam/live"),
    ("rtsp://cam:554/live", "rtsp://cam:554/live"),
    # forms the camera review found shown whole (session 32): XMeye's path, a bare p=, a
    # token as the user, credentials=
    ("rtsp://cam:554/user=admin_password=tlJw_channel=1_stream=0.sdp",
     "rtsp://cam:554/user=admin_password=***"),
    ("http://cam/snap?u=admin&p=Secr3t", "http://cam/snap?u=admin&p=***"),
    ("http://APITOKEN0123456789@cam/video", "http://***@cam/video"),
    ("http://cam/v?credentials=abc&x=1", "http://cam/v?credentials=***&x=1"),
    ("http://cam/img.jpg?step=2&pos=3", "http://cam/img.jpg?step=2&pos=3"),
])
def test_odd_passwords_are_hidden_too(source: str, shown: str) -> None:
    health = CameraHealth(id="c", state="offline", fps=0.0, last_frame_age_s=None, frames=0,
                          reconnects=0, last_error=f"open {source}", source=source,
                          mode="triggered", recipe=None)
    assert health.source == shown and health.last_error == f"open {shown}"


def test_a_file_source_is_shown_by_its_name() -> None:
    """Line and viewer keys read server paths in /v1/cameras and triggers' 503s (camera
    review, session 32): a file or folder is shown by its name, as references are."""
    health = CameraHealth(id="c", state="offline", fps=0.0, last_frame_age_s=None, frames=0,
                          reconnects=0, last_error=None, source="/srv/line/cams/door.avi",
                          mode="triggered", recipe=None)
    assert health.source == "door.avi"


@pytest.mark.parametrize(("source", "shown"), [
    ("file:///srv/line/cams/door.avi", "door.avi"),
    ("/srv/line cams/door.avi", "door.avi"),
    ("/srv/line/cams/door!1.avi", "door!1.avi"),
    ("file:///srv/line%20cams/door.avi", "door.avi"),
    ("rtsp://192.168.1.5:554/h264_p=1", "rtsp://192.168.1.5:554/h264_p=1"),
    ("http://cam/stream/p=1", "http://cam/stream/p=1"),
    ("rtspsrc location=rtsp://a:b@h/ ! decodebin", "rtspsrc location=rtsp://a:***@h/ ! decodebin"),
    ("0", "0")])
def test_sources_are_shown_by_name_or_with_secrets_hidden(source: str, shown: str) -> None:
    """A file URL, a path with a space or a '!' were shown whole; a bare p= in a path
    hid the rest of it (review of the camera fixes, session 32)."""
    from lineside_inspect.redact import shown_source

    assert shown_source(source) == shown
