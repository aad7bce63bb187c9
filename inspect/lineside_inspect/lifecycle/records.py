"""What the lifecycle keeps in the store's database: the audit log, gate reports, model
admissions (lineage on the box), shadow runs and their disagreements."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from lineside_inspect.errors import NotFoundError, echo
from lineside_inspect.store.models import (
    LIFECYCLE_TABLES,
    AdmissionRow,
    AuditRow,
    Base,
    GateReportRow,
    InspectionRow,
    ShadowResultRow,
    ShadowRunRow,
    reviewed_verdict,
)
from lineside_inspect.store.store import create_tables

if TYPE_CHECKING:
    from lineside_inspect.lifecycle.gate import GateReport
    from lineside_inspect.store import Store


log = logging.getLogger("lineside.lifecycle")


def _now() -> datetime:
    return datetime.now(UTC)


# audit actions after which another version judges (the startup check reads the last one)
ACTIVATIONS = ("activate", "force_activate", "rollback", "promote", "force_promote",
               "auto_rollback", "startup", "restore", "force_restore")
# after a promotion, the entries that end its watch: any other activation of the model (a
# restore at start-up brings the promoted version back: not one), or the watch's own end
WATCH_ENDS = (*(a for a in ACTIVATIONS if a not in ("restore", "force_restore")),
              "rollout_complete", "rollout_rolled_back", "rollout_stopped")


class Records:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        for name in LIFECYCLE_TABLES:  # on an old database too
            create_tables(self.engine, [Base.metadata.tables[name]])
            store.checkpoint()

    def _fresh(self) -> None:
        """Apply the store's journal before reading inspections (an outage only delays it)."""
        try:
            self.store.flush()
        except Exception as exc:
            log.error("store: applying the journal before a lifecycle read failed: %s", exc)

    # -- audit log ----------------------------------------------------------------------
    def audit(self, *, actor: str, action: str, model: str | None = None,
              version: str | None = None, reason: str = "",
              details: dict[str, Any] | None = None) -> dict[str, Any]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            row = AuditRow(created_at=_now(), box_id=self.store.box_id, actor=actor, action=action,
                           model_name=model, version=version, reason=reason, details=details or {})
            s.add(row)
        return self._audit_json(row)

    def last_activation(self, model: str) -> dict[str, Any] | None:
        """This box's newest audit entry that changed which version of ``model`` judges."""
        with Session(self.engine) as s:
            row = s.scalars(select(AuditRow).where(
                AuditRow.model_name == model, AuditRow.action.in_(ACTIVATIONS),
                AuditRow.box_id == self.store.box_id)
                .order_by(AuditRow.id.desc()).limit(1)).first()
            return None if row is None else self._audit_json(row)

    def open_promotion(self, model: str) -> dict[str, Any] | None:
        """This box's newest promotion of ``model`` if nothing ended its watch after it
        (:data:`WATCH_ENDS`; session 47: a watch resumed at start-up), else None."""
        with Session(self.engine) as s:
            row = s.scalars(select(AuditRow).where(
                AuditRow.model_name == model,
                AuditRow.action.in_(("promote", "force_promote")),
                AuditRow.box_id == self.store.box_id)
                .order_by(AuditRow.id.desc()).limit(1)).first()
            if row is None:
                return None
            ended = s.scalars(select(AuditRow.id).where(
                AuditRow.model_name == model, AuditRow.action.in_(WATCH_ENDS),
                AuditRow.box_id == self.store.box_id, AuditRow.id > row.id).limit(1)).first()
            return None if ended is not None else self._audit_json(row)

    def last_rollback(self, model: str, version: str) -> dict[str, Any] | None:
        """This box's newest automatic rollback away from ``model`` ``version``."""
        with Session(self.engine) as s:
            rows = s.scalars(select(AuditRow).where(
                AuditRow.model_name == model, AuditRow.action == "auto_rollback",
                AuditRow.box_id == self.store.box_id)
                .order_by(AuditRow.id.desc()).limit(200)).all()
            row = next((r for r in rows if (r.details or {}).get("from") == version), None)
            return None if row is None else self._audit_json(row)

    @staticmethod
    def _audit_json(r: AuditRow) -> dict[str, Any]:
        return {"id": r.id, "created_at": r.created_at, "box_id": r.box_id, "actor": r.actor,
                "action": r.action, "model": r.model_name, "version": r.version,
                "reason": r.reason, "details": r.details}

    def audit_log(self, *, model: str | None = None, action: str | None = None, limit: int = 50,
                  offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """This box's entries, newest first: boxes sharing a database each run their own
        models, and box a listed box b's activations and rollbacks of a model of the same
        name as its own history (as gates, shadow runs and admissions, this box's)."""
        conds: list[Any] = [AuditRow.box_id == self.store.box_id]
        if model:
            conds.append(AuditRow.model_name == model)
        if action:
            conds.append(AuditRow.action == action)
        with Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(AuditRow).where(*conds)) or 0
            rows = s.scalars(select(AuditRow).where(*conds).order_by(AuditRow.id.desc())
                             .limit(limit).offset(offset)).all()
            return total, [self._audit_json(r) for r in rows]

    # -- gate reports -------------------------------------------------------------------
    def save_gate(self, report: GateReport, actor: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(GateReportRow(
                id=report.id, created_at=_now(), box_id=self.store.box_id, actor=actor,
                model_name=report.candidate.model, candidate_version=report.candidate.version,
                candidate_sha256=report.candidate.sha256, against_version=report.against.version,
                against_sha256=report.against.sha256, golden_name=report.golden.name,
                golden_version=report.golden.version, golden_digest=report.golden.digest,
                passed=report.passed, report=report.model_dump(mode="json")))

    def gates_of(self, model: str, version: str, sha256: str, limit: int = 200) -> list[GateReportRow]:
        """This box's gate reports of ``model`` ``version`` with the graph ``sha256``, newest
        first (boxes sharing a database keep their own golden sets and decisions)."""
        with Session(self.engine) as s:
            return list(s.scalars(select(GateReportRow).where(
                GateReportRow.model_name == model, GateReportRow.candidate_version == version,
                GateReportRow.candidate_sha256 == sha256,
                GateReportRow.box_id == self.store.box_id)
                .order_by(GateReportRow.created_at.desc()).limit(limit)).all())

    def gate_reports(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        """This box's reports of ``model``, newest first: a report carries no box, and
        another box's pass admits nothing here (it listed as if it did; review, session 36)."""
        with Session(self.engine) as s:
            rows = s.scalars(select(GateReportRow).where(
                GateReportRow.model_name == model, GateReportRow.box_id == self.store.box_id)
                .order_by(GateReportRow.created_at.desc()).limit(limit)).all()
            return [_report_doc(r) for r in rows]

    def gate_report(self, report_id: str) -> dict[str, Any]:
        """This box's report ``report_id``: another box's on a shared database is not found,
        as in :meth:`gate_reports` (it was shown, admitting nothing here; review, session 37)."""
        with Session(self.engine) as s:
            row = s.get(GateReportRow, report_id)
            if row is None or row.box_id != self.store.box_id:
                raise NotFoundError(f"no gate report {echo(report_id)} on this box")
            return _report_doc(row)

    # -- admissions (lineage on the box) -------------------------------------------------
    def admit(self, *, model: str, version: str, sha256: str, role: str, actor: str,
              gate: GateReportRow | None, forced: bool, reason: str,
              lineage: dict[str, Any], audit: dict[str, Any] | None = None) -> None:
        """An admissions row, and with ``audit`` (:meth:`audit`'s arguments) its audit
        entry in the same transaction: both are written, or neither."""
        self.admit_all([{"model": model, "version": version, "sha256": sha256, "role": role,
                         "actor": actor, "gate": gate, "forced": forced, "reason": reason,
                         "lineage": lineage}], audit=audit)

    def admit_all(self, admissions: list[dict[str, Any]], *,
                  audit: dict[str, Any] | None = None) -> None:
        """Admissions rows (:meth:`admit`'s arguments each) and an audit entry, in one
        transaction."""
        with Session(self.engine) as s, s.begin():
            if audit is not None:
                s.add(AuditRow(created_at=_now(), box_id=self.store.box_id, actor=audit["actor"],
                               action=audit["action"], model_name=audit.get("model"),
                               version=audit.get("version"), reason=audit.get("reason", ""),
                               details=audit.get("details") or {}))
            for a in admissions:
                gate = a["gate"]
                s.add(AdmissionRow(
                    created_at=_now(), box_id=self.store.box_id, model_name=a["model"],
                    version=a["version"], sha256=a["sha256"], role=a["role"],
                    gate_report_id=None if gate is None else gate.id,
                    golden_name=None if gate is None else gate.golden_name,
                    golden_version=None if gate is None else gate.golden_version,
                    golden_digest=None if gate is None else gate.golden_digest,
                    forced=a["forced"], actor=a["actor"], reason=a["reason"],
                    lineage=a["lineage"]))

    def admissions(self, model: str, limit: int = 50) -> list[dict[str, Any]]:
        """This box's admissions of ``model``, newest first: boxes sharing a database admit
        their own versions (another box's showed as how a version came to judge here)."""
        with Session(self.engine) as s:
            rows = s.scalars(select(AdmissionRow).where(AdmissionRow.model_name == model,
                                                        AdmissionRow.box_id == self.store.box_id)
                             .order_by(AdmissionRow.id.desc()).limit(limit)).all()
            return [{"created_at": r.created_at, "box_id": r.box_id, "model": r.model_name,
                     "version": r.version, "sha256": r.sha256, "role": r.role,
                     "gate_report_id": r.gate_report_id,
                     "golden": None if r.golden_name is None else {
                         "name": r.golden_name, "version": r.golden_version,
                         "digest": r.golden_digest},
                     "forced": r.forced, "actor": r.actor, "reason": r.reason,
                     "lineage": r.lineage} for r in rows]

    # -- shadow runs ----------------------------------------------------------------------
    def start_shadow(self, run_id: str, *, model: str, version: str, sha256: str,
                     sample_rate: float) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(ShadowRunRow(id=run_id, created_at=_now(), box_id=self.store.box_id,
                               model_name=model, shadow_version=version, shadow_sha256=sha256,
                               sample_rate=sample_rate))

    def update_shadow(self, run_id: str, counts: dict[str, int], *, stopped: bool = False) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(ShadowRunRow, run_id)
            if row is None:
                return
            for k, v in counts.items():
                setattr(row, k, v)
            if stopped:
                row.stopped_at = _now()

    def add_disagreement(self, run_id: str, *, inspection_id: str, model: str,
                         active_version: str, active_verdict: str,
                         active_defects: list[dict[str, Any]], shadow_version: str,
                         shadow_verdict: str, shadow_defects: list[dict[str, Any]],
                         shadow_reasons: list[dict[str, Any]], fused_with: str | None = None,
                         fused_kind: str | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(ShadowResultRow(
                created_at=_now(), run_id=run_id, inspection_id=inspection_id, model_name=model,
                active_version=active_version, active_verdict=active_verdict,
                active_defects=active_defects, shadow_version=shadow_version,
                shadow_verdict=shadow_verdict, shadow_defects=shadow_defects,
                shadow_reasons=shadow_reasons, fused_with=fused_with, fused_kind=fused_kind))

    def shadow_run(self, model: str, run_id: str | None = None) -> ShadowRunRow | None:
        """``run_id``'s row, or the model's latest run on this box (another box sharing the
        database shadows its own: its run was shown as this box's; review, session 36)."""
        with Session(self.engine) as s:
            if run_id is not None:
                return s.get(ShadowRunRow, run_id)
            return s.scalars(select(ShadowRunRow).where(
                ShadowRunRow.model_name == model, ShadowRunRow.box_id == self.store.box_id)
                .order_by(ShadowRunRow.created_at.desc()).limit(1)).first()

    def disagreements(self, *, run_id: str | None = None, inspection_id: str | None = None,
                      limit: int = 500) -> list[dict[str, Any]]:
        conds: list[Any] = []
        if run_id:
            conds.append(ShadowResultRow.run_id == run_id)
        if inspection_id:
            conds.append(ShadowResultRow.inspection_id == inspection_id)
        with Session(self.engine) as s:
            rows = s.scalars(select(ShadowResultRow).where(*conds)
                             .order_by(ShadowResultRow.id.desc()).limit(limit)).all()
            return [{"run_id": r.run_id, "inspection_id": r.inspection_id, "created_at": r.created_at,
                     "model": r.model_name, "fused_with": r.fused_with,
                     "fused_kind": r.fused_kind,
                     "active": {"version": r.active_version, "verdict": r.active_verdict,
                                "defects": r.active_defects},
                     "shadow": {"version": r.shadow_version, "verdict": r.shadow_verdict,
                                "defects": r.shadow_defects, "reasons": r.shadow_reasons}}
                    for r in rows]

    def reviewed_truth(self, inspection_ids: list[str]) -> dict[str, str]:
        """The reviewed verdict (fail: the truth after the latest review has a defect) of
        each of ``inspection_ids`` a reviewer has seen; one whose latest review's boxes do
        not read as a list is left out (``reviewed_verdict``)."""
        out: dict[str, str] = {}
        self._fresh()
        with Session(self.engine) as s:
            for start in range(0, len(inspection_ids), 500):
                rows = s.scalars(select(InspectionRow).where(
                    InspectionRow.id.in_(inspection_ids[start:start + 500]),
                    InspectionRow.review_state != "unreviewed")
                    .options(selectinload(InspectionRow.reviews))).all()
                for r in rows:
                    said = [(v.action, v.boxes) for v in r.reviews]
                    verdict = reviewed_verdict(r.verdict, said)
                    if verdict is None and said:  # its last review's boxes do not read
                        continue
                    out[r.id] = verdict or "pass"
        return out

    def verdict_counts(self, *, model: str, version: str, recipe: str | None,
                       since: datetime | None = None, until: datetime | None = None,
                       last: int | None = None) -> tuple[int, int]:
        """(inspections, fails) of ``model`` ``version`` under ``recipe`` on this box: since/
        until, or its ``last`` ones. This box's only: a watch judges and rolls back this
        box's version, and boxes sharing a database run their own (another box's fails
        rolled back a box that had judged nothing; fleet review)."""
        conds: list[Any] = [InspectionRow.box_id == self.store.box_id,
                            InspectionRow.model_name == model, InspectionRow.model_version == version]
        if recipe:
            conds.append(InspectionRow.recipe_name == recipe)
        if since is not None:
            conds.append(InspectionRow.created_at >= since)
        if until is not None:
            conds.append(InspectionRow.created_at < until)
        self._fresh()
        with Session(self.engine) as s:
            if last:  # the newest ``last``: counted over that subquery
                sub = (select(InspectionRow.verdict).where(*conds)
                       .order_by(InspectionRow.created_at.desc()).limit(last).subquery())
                q = select(func.count(), func.count().filter(sub.c.verdict == "fail")).select_from(sub)
            else:  # a watch asks every second for a half hour: counted by the database
                q = select(func.count(), func.count().filter(InspectionRow.verdict == "fail")).where(*conds)
            n, fails = s.execute(q).one()
        return int(n), int(fails or 0)

    def false_rejects(self, *, model: str, version: str, since: datetime) -> int:
        """This box's inspections of ``model`` ``version`` since ``since`` that failed and
        whose latest review says the part was good (as :meth:`verdict_counts`, this box's)."""
        self._fresh()
        with Session(self.engine) as s:
            rows = s.scalars(select(InspectionRow).where(
                InspectionRow.box_id == self.store.box_id, InspectionRow.model_name == model,
                InspectionRow.model_version == version,
                InspectionRow.created_at >= since, InspectionRow.verdict == "fail",
                InspectionRow.review_state != "unreviewed")
                .options(selectinload(InspectionRow.reviews))).all()
            return sum(1 for r in rows if reviewed_verdict(
                r.verdict, [(v.action, v.boxes) for v in r.reviews]) == "pass")


def _report_doc(row: GateReportRow) -> dict[str, Any]:
    """A stored gate report with who ran it; a report whose stored text is not an object
    (a hand edit, another writer's) is its id alone, which does not read as a report
    (the routes leave it out of a list, or say so: it was a 500, session 42)."""
    return {**(row.readable_report() or {"id": row.id}), "actor": row.actor}
