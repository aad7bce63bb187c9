"""The lifecycle's HTTP API: golden sets, gates, shadows, promotions, the audit log and
the review queues. Changing anything is for admins; reading figures is for reviewers too
(the review page shows them)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lineside_inspect.errors import NotFoundError, UnreadableGateReport, echo
from lineside_inspect.lifecycle.alarm import FailRateAlarm
from lineside_inspect.lifecycle.gate import GateReport
from lineside_inspect.lifecycle.golden import GoldenLibrary, GoldenManifest, from_store
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.lifecycle.schemas import (
    AuditPage,
    EveryRecipeGate,
    FailRateAlarms,
    FailRateTrack,
    GateReports,
    GateRun,
    GoldenAdd,
    GoldenSets,
    ModelLineage,
    Promote,
    Promotion,
    Queue,
    Queues,
    Relearn,
    RolloutStatus,
    ShadowDisagreements,
    ShadowStart,
    ShadowStatus,
    StoredGateReport,
)
from lineside_inspect.names import Name
from lineside_inspect.server.deps import Admin, Reviewer, RoleFirstRoute, get_store
from lineside_inspect.server.responses import errors
from lineside_inspect.store.models import InspectionRow, ShadowResultRow

log = logging.getLogger("lineside.lifecycle")

router = APIRouter(route_class=RoleFirstRoute, prefix="/v1", tags=["lifecycle"])


def lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle  # type: ignore[no-any-return]


async def _off_loop(fn: Any, *args: Any, **kw: Any) -> Any:
    """Database and file work off the event loop."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kw))


# -- golden sets --------------------------------------------------------------------------
@router.get("/golden", responses=errors(401, 403))
async def list_golden(request: Request, who: Reviewer) -> GoldenSets:
    """Every golden set on this box with its versions."""
    return GoldenSets.model_validate({"items": await _off_loop(lifecycle(request).library.summaries)})


@router.get("/golden/{name}", responses=errors(401, 403, 404, 422))
async def get_golden(name: str, request: Request, who: Reviewer,
                     version: Annotated[int | None, Query(ge=1)] = None) -> GoldenManifest:
    """A golden set's manifest (latest version unless ``version``): its items by sha256."""
    library = lifecycle(request).library
    GoldenLibrary.check_name(name)
    return await _off_loop(library.get, name, version)  # type: ignore[no-any-return]


@router.post("/golden/{name}", responses=errors(401, 403, 404, 413, 422))
async def add_golden(name: str, body: GoldenAdd, request: Request, who: Admin) -> GoldenManifest:
    """Reviewed inspections of this server's store into golden set ``name`` (a new version;
    version 1 of a new set): each must get the verdict of its reviewed truth."""
    lc = lifecycle(request)
    GoldenLibrary.check_name(name)
    store = get_store(request)
    max_pixels: int = request.app.state.settings.max_pixels  # as the frames were taken

    def work() -> GoldenManifest:
        items, classes = from_store(store, ids=body.ids(), since=body.since, limit=body.limit,
                                    max_pixels=max_pixels)
        manifest = lc.library.add(name, items, classes, note=body.note)
        lc.records.audit(actor=who.name, action="golden_add", reason=body.note,
                         details={"golden": f"{manifest.name}:{manifest.version}",
                                  "digest": manifest.digest, "added": len(items),
                                  "items": len(manifest.items)})
        return manifest

    return await _off_loop(work)  # type: ignore[no-any-return]


# -- gate ---------------------------------------------------------------------------------
@router.post("/models/{name}/gate", responses=errors(401, 403, 404, 409, 413, 422))
async def gate(name: str, body: GateRun, request: Request,
               who: Admin) -> GateReport | EveryRecipeGate:
    """Replay a golden set through a candidate version (one unloaded from memory is loaded
    again from its package) and the active one (or
    ``against``), each at its own card's thresholds under the recipe's rules; under a
    recipe fusing a detector with a good-only model, each with the other model of the
    fusion, as the line judges (``fused_with``). The report is stored: a candidate that
    failed it is refused activation and shadowing unless an admin forces it (``force``
    and a ``reason``, recorded). 200 with ``passed`` false for a failed gate; 409
    ``busy`` while another gate runs. ``"recipe": "*"``: one gate under each recipe that
    would judge the version once active (with ``require_gate`` an admission needs a current
    pass under every one), answered as ``EveryRecipeGate``."""
    lc = lifecycle(request)
    if body.recipe == "*":
        reports = await _off_loop(lc.gate_all, name, body.version, golden=body.golden,
                                  golden_version=body.golden_version, against=body.against,
                                  actor=who.name)
        return EveryRecipeGate(passed=all(r.passed for r in reports), reports=reports)
    return await _off_loop(lc.gate, name, body.version, golden=body.golden,  # type: ignore[no-any-return]
                           golden_version=body.golden_version, against=body.against,
                           recipe=body.recipe, actor=who.name)


@router.get("/models/{name}/gates", responses=errors(401, 403, 404))
async def gate_reports(name: str, request: Request, who: Admin,
                       limit: Annotated[int, Query(ge=1, le=200)] = 20) -> GateReports:
    """The model's gate reports, newest first; a stored report that does not read as one
    is left out and counted in ``left_out``."""
    lc = lifecycle(request)
    items: list[StoredGateReport] = []
    docs = await _off_loop(lc.records.gate_reports, name, limit)
    for doc in docs:
        try:
            items.append(StoredGateReport.model_validate(doc))
        except ValidationError:
            log.warning("gate report %s of %s does not read as a report: left out",
                        echo(str(doc.get("id"))), name)
    return GateReports(items=items, left_out=len(docs) - len(items))


@router.get("/gates/{report_id}", responses=errors(401, 403, 404, 422))
async def gate_report(report_id: str, request: Request, who: Admin) -> StoredGateReport:
    lc = lifecycle(request)
    try:
        return StoredGateReport.model_validate(await _off_loop(lc.records.gate_report, report_id))
    except ValidationError:
        raise UnreadableGateReport(f"gate report {echo(report_id)}: its stored text does not read "
                               "as a gate report (a hand edit, or another writer's); it "
                               "admits nothing") from None


# -- shadow -------------------------------------------------------------------------------
@router.post("/models/{name}/shadow", responses=errors(401, 403, 404, 409, 413, 422))
async def start_shadow(name: str, body: ShadowStart, request: Request, who: Admin) -> ShadowStatus:
    """Run a version (loaded, or loaded again from its package) as the shadow of the
    model's active one on a sample of live
    frames, off the verdict path. Refused (409 gate_failed) for a version whose gate
    failed unless forced with a reason (recorded)."""
    lc = lifecycle(request)
    return ShadowStatus.model_validate(await _off_loop(
        lc.start_shadow, name, body.version, sample_rate=body.sample_rate, actor=who.name,
        force=body.force, reason=body.reason))


@router.get("/models/{name}/shadow", responses=errors(401, 403, 404))
async def shadow_status(name: str, request: Request, who: Reviewer) -> ShadowStatus:
    """Agreement so far, and escapes and false rejects of shadow and active model against
    the reviewers' truth on the frames they disagreed on."""
    return ShadowStatus.model_validate(await _off_loop(lifecycle(request).shadow_status, name))


@router.delete("/models/{name}/shadow", responses=errors(401, 403, 404))
async def stop_shadow(name: str, request: Request, who: Admin) -> ShadowStatus:
    return ShadowStatus.model_validate(await _off_loop(lifecycle(request).stop_shadow, name,
                                                       actor=who.name))


@router.get("/inspections/{inspection_id}/shadow", responses=errors(401, 403, 404))
async def inspection_shadow(inspection_id: str, request: Request, who: Reviewer) -> ShadowDisagreements:
    """What a shadow model said about this inspection where it disagreed (both results):
    the reviewer's review then says who was right."""
    lc = lifecycle(request)
    await _off_loop(get_store(request).get, inspection_id)  # 404 for an id the store lacks
    items = await _off_loop(lc.records.disagreements, inspection_id=inspection_id, limit=50)
    return ShadowDisagreements.model_validate({"items": items})


# -- promotion and rollout ----------------------------------------------------------------
@router.post("/models/{name}/promote", responses=errors(401, 403, 404, 409, 413, 422))
async def promote(name: str, body: Promote, request: Request, who: Admin) -> Promotion:
    """One call: gate the version against the active one, activate it (refused with 409
    gate_failed when the gate fails, unless forced with a reason), then watch it: past the
    configured bounds the previous version comes back by itself (docs/lifecycle.md)."""
    lc = lifecycle(request)
    doc = await _off_loop(lc.promote, name, body.version, golden=body.golden,
                          golden_version=body.golden_version, recipe=body.recipe, actor=who.name,
                          force=body.force, reason=body.reason)
    if lc.kept is not None:  # kept across a restart (session 47)
        await _off_loop(lc.kept.activated, name, body.version)
    _publish(request)
    return Promotion.model_validate({"report": doc["report"], "rollout": doc["rollout"]})


@router.get("/models/{name}/rollout", responses=errors(401, 403, 404))
async def rollout(name: str, request: Request, who: Reviewer) -> RolloutStatus:
    """The model's latest watched rollout since the server started (a watch a restart cut
    short is watched again from the start, counted afresh: docs/lifecycle.md)."""
    return RolloutStatus.model_validate(await _off_loop(lifecycle(request).rollout_status, name))


@router.get("/models/{name}/lineage", responses=errors(401, 403, 404))
async def lineage(name: str, request: Request, who: Admin) -> ModelLineage:
    """Each loaded version's card lineage (dataset revision, parent model) and how each
    version came to judge parts: the gate report and golden set that admitted it, or a
    forced admission."""
    lc = lifecycle(request)
    slots = lc.registry.models()
    lc.registry.detector(name)  # 404 naming the loaded models
    slot = slots[name]
    versions = {v: ({} if d.card.lineage is None else d.card.lineage.model_dump(mode="json"))
                for v, d in slot.versions.items()}
    admissions = await _off_loop(lc.records.admissions, name)
    return ModelLineage.model_validate({"model": name, "active": slot.active, "versions": versions,
                                        "admissions": admissions})


# -- the fail-rate alarm -----------------------------------------------------------------
@router.get("/alarms", responses=errors(401, 403, 404))
async def alarms(request: Request, who: Reviewer) -> FailRateAlarms:
    """Each recipe's fail rate, watched for a jump: its usual rate (learned from its first
    inspections with its models, or the recipe's usual_fail_rate), its recent one and
    whether it is in alarm. Counts resumed after a restart show once the server is ready."""
    return FailRateAlarms.model_validate({"items": _alarm(request).status()})


@router.post("/alarms/{recipe}/relearn", responses=errors(401, 403, 404, 409, 413, 422))
async def relearn(recipe: Name, body: Relearn, request: Request, who: Admin) -> FailRateTrack:
    """Learn the recipe's usual fail rate again from its next inspections: once the cause
    of an alarm was fixed, or accepted as the new normal (a recipe that gives its
    usual_fail_rate keeps it: only its window starts again). Answers the track forgotten;
    404 for a recipe without counts."""
    lc, alarm = lifecycle(request), _alarm(request)
    old = alarm.track(recipe)  # 404 first
    if lc.store is not None:  # recorded first: a relearn that cannot be recorded is not made
        await _off_loop(lc.records.audit, actor=who.name, action="fail_rate_relearn",
                        model=old.model, version=old.version, reason=body.reason,
                        details=old.details(alarm.settings))
    # of the models recorded (409 busy if others took over meanwhile)
    old = alarm.relearn(recipe, of=old, actor=who.name)
    return FailRateTrack.model_validate(old.to_json(alarm.settings))


def _alarm(request: Request) -> FailRateAlarm:
    alarm = lifecycle(request).alarm
    if alarm is None:
        raise NotFoundError("the fail-rate alarm is off on this server "
                            "(lifecycle.fail_rate_alarm.enabled)")
    return alarm


# -- audit log and queues -----------------------------------------------------------------
@router.get("/audit", responses=errors(401, 403, 404, 422))
async def audit(request: Request, who: Reviewer, model: Name | None = None,
                action: Annotated[str | None, Query(max_length=32)] = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50,
                offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> AuditPage:
    """Who did what to which model, when and why, newest first: activations (forced ones
    as force_*), gates, shadows, promotions and automatic rollbacks."""
    lc = lifecycle(request)
    total, items = await _off_loop(lc.records.audit_log, model=model, action=action, limit=limit,
                                   offset=offset)
    return AuditPage.model_validate({"total": total, "limit": limit, "offset": offset, "items": items})


QUEUES = (
    ("shadow", "Shadow disagreements",
     "a shadow model's verdict differed from the served one: say who was right"),
    ("to_label", "To label",
     "kept by active-learning capture (near a threshold, rare class, shadow disagreement, "
     "random sample): review it so data pull brings it into training"),
)


@router.get("/queues", responses=errors(401, 403, 404))
async def queues(request: Request, who: Reviewer) -> Queues:
    """The review queues the lifecycle fills, with their sizes: list one with
    ``GET /v1/inspections?queue=NAME`` (add ``review_state=unreviewed`` for what is left)."""
    store = get_store(request)
    lc = lifecycle(request)

    def count() -> list[Queue]:
        store.flush()
        conds = {"shadow": InspectionRow.id.in_(select(ShadowResultRow.inspection_id)),
                 "to_label": InspectionRow.capture.is_not(None)}
        out = []
        with Session(store.engine) as s:
            for name, title, description in QUEUES:
                q = select(func.count()).select_from(InspectionRow).where(conds[name])
                total = s.scalar(q) or 0
                todo = s.scalar(q.where(InspectionRow.review_state == "unreviewed")) or 0
                out.append(Queue(name=name, title=title, description=description,  # type: ignore[arg-type]
                                 total=total, unreviewed=todo))
        return out

    items = await _off_loop(count)
    capture = lc.capture
    return Queues(items=items, capture_used_this_hour=capture.used() if capture else {},
                  capture_per_hour=lc.settings.capture.per_hour)


def _publish(request: Request) -> None:
    from lineside_inspect.server.routes.admin import publish_state

    publish_state(request.app.state.metrics, request.app.state.registry)
