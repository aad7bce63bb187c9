"""The inspection store: every inspection in a database (SQLite by default, PostgreSQL
by URL), images as files under a data folder.

Order of writes makes crashes safe: the image file is written atomically and synced
before the row is committed, and an inspection is acknowledged as stored only after
the commit. A crash can therefore leave an orphan file (removed at start-up) but never
a row pointing at a missing file, nor lose an acknowledged inspection.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, or_, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, selectinload

from lineside_inspect._cv import cv2
from lineside_inspect.atomic import write_atomic
from lineside_inspect.errors import ConfigError, NotFoundError
from lineside_inspect.inspector import Inspection
from lineside_inspect.store.models import ADDED_COLUMNS, Base, InspectionRow, ReviewRow

log = logging.getLogger("lineside.store")
ACTIONS = ("confirm", "false_reject", "missed_defect", "relabel")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged row survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, data_dir: str | Path, url: str | None = None, *, pass_rate: float = 0.1,
                 max_bytes: int | None = None, max_age_days: float | None = None,
                 seed: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{(self.data_dir / 'lineside.db').resolve()}"
        self.engine = make_engine(self.url)
        Base.metadata.create_all(self.engine)
        self._add_columns()
        self.pass_rate = pass_rate
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _add_columns(self) -> None:
        """Bring a database made by an earlier release up to date: only nullable columns
        are ever added, so old rows stay valid and nothing stored is touched."""
        present = {c["name"] for c in sa_inspect(self.engine).get_columns("inspections")}
        with self.engine.begin() as conn:
            for table, column, sql_type in ADDED_COLUMNS:
                if column not in present:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
                    log.info("store: added column %s.%s", table, column)

    # -- writing --------------------------------------------------------------------
    def _encoded(self, inspection: Inspection) -> tuple[bytes, str]:
        if inspection.raw is not None:
            return inspection.raw, inspection.raw_ext or "jpg"
        ok, buf = cv2.imencode(".png", inspection.image)  # camera frames: lossless
        if not ok:
            raise OSError("could not encode the frame")
        return bytes(buf.tobytes()), "png"

    def save(self, inspection: Inspection) -> bool:
        """Record ``inspection``; True once committed. Never raises for a full disk or
        a database outage: the verdict is still answered, marked as not stored."""
        keep_image = inspection.verdict == "fail" or self._rng.random() < self.pass_rate
        rel: str | None = None
        ref_rel: str | None = None
        size = 0
        try:
            if keep_image:
                data, ext = self._encoded(inspection)
                day = inspection.created_at.strftime("%Y-%m-%d")
                rel = f"{day}/{inspection.id}.{ext}"
                write_atomic(self.images_dir / rel, data)
                size = len(data)
                ref = inspection.reference
                if ref is not None:
                    ref_rel = f"refs/{ref.sha256}.{ref.ext}"
                    if not (self.images_dir / ref_rel).is_file():
                        write_atomic(self.images_dir / ref_rel, ref.raw)
        except OSError as exc:
            log.error("inspection %s not stored: image write failed: %s", inspection.id, exc)
            return False
        card = inspection.detector.card
        labels = inspection.defects.labels
        row = InspectionRow(
            id=inspection.id, created_at=inspection.created_at, camera_id=inspection.camera_id,
            part_id=inspection.part_id, recipe_name=inspection.recipe.name,
            recipe_version=inspection.recipe.version, model_name=card.name,
            model_version=card.version, model_sha256=card.sha256,
            class_names=list(card.class_names), verdict=inspection.verdict,
            reasons=inspection.reasons, defects=inspection.defects.to_json(),
            labels="," + ",".join(sorted(set(labels))) + "," if labels else "",
            max_score=float(inspection.defects.scores.max()) if len(labels) else 0.0,
            timings_ms=inspection.timings_ms, image_path=rel,
            width=int(inspection.image.shape[1]), height=int(inspection.image.shape[0]),
            image_bytes=size, review_state="unreviewed",
            reference_name=None if inspection.reference is None else inspection.reference.name,
            reference_path=ref_rel,
        )
        try:
            with Session(self.engine) as s, s.begin():
                s.add(row)
        except Exception as exc:  # SQLAlchemy wraps driver errors (disk full, I/O error...)
            log.error("inspection %s not stored: database write failed: %s", inspection.id, exc)
            if rel is not None:
                (self.images_dir / rel).unlink(missing_ok=True)
            return False
        if self.max_bytes is not None or self.max_age_days is not None:
            self.enforce_retention()
        return True

    # -- start-up and retention -----------------------------------------------------
    def cleanup(self) -> dict[str, int]:
        """Remove orphan and temp files; clear image paths whose file is gone."""
        with Session(self.engine) as s:
            known = {p for (p,) in s.execute(select(InspectionRow.image_path)) if p}
            known |= {p for (p,) in s.execute(select(InspectionRow.reference_path)) if p}
        removed = 0
        for path in self.images_dir.rglob("*"):
            if not path.is_file():
                continue
            rel = path.relative_to(self.images_dir).as_posix()
            if path.name.startswith(".") or rel not in known:
                path.unlink(missing_ok=True)
                removed += 1
        cleared = 0
        with Session(self.engine) as s, s.begin():
            for row in s.scalars(select(InspectionRow).where(InspectionRow.image_path.is_not(None))):
                if not (self.images_dir / str(row.image_path)).is_file():
                    row.image_path = None
                    cleared += 1
                if row.reference_path and not (self.images_dir / row.reference_path).is_file():
                    row.reference_path = None
                    cleared += 1
        return {"orphans_removed": removed, "missing_cleared": cleared}

    def _deletion_order(self) -> list[Any]:
        """Who goes first: passes, then reviewed fails, then unreviewed fails; oldest first."""
        return [
            InspectionRow.verdict == "pass",
            (InspectionRow.verdict == "fail") & (InspectionRow.review_state != "unreviewed"),
            (InspectionRow.verdict == "fail") & (InspectionRow.review_state == "unreviewed"),
        ]

    def enforce_retention(self, now: datetime | None = None) -> int:
        """Apply the age limit, then the disk quota. Returns rows deleted."""
        deleted = 0
        with self._lock, Session(self.engine) as s, s.begin():
            if self.max_age_days is not None:
                cutoff = (now or datetime.now(UTC)) - timedelta(days=self.max_age_days)
                for row in s.scalars(select(InspectionRow).where(InspectionRow.created_at < cutoff)):
                    deleted += self._delete(s, row)
            if self.max_bytes is not None:
                used = s.scalar(select(func.coalesce(func.sum(InspectionRow.image_bytes), 0))) or 0
                for tier in self._deletion_order():
                    if used <= self.max_bytes:
                        break
                    q = (select(InspectionRow).where(tier, InspectionRow.image_bytes > 0)
                         .order_by(InspectionRow.created_at))
                    for row in s.scalars(q):
                        if used <= self.max_bytes:
                            break
                        used -= row.image_bytes
                        deleted += self._delete(s, row)
        return deleted

    def _delete(self, s: Session, row: InspectionRow) -> int:
        if row.image_path:
            (self.images_dir / row.image_path).unlink(missing_ok=True)
        ref = row.reference_path
        s.delete(row)
        if ref and not s.scalar(select(func.count()).where(InspectionRow.reference_path == ref)):
            (self.images_dir / ref).unlink(missing_ok=True)  # its last user is gone
        return 1

    # -- reading --------------------------------------------------------------------
    def query(self, *, verdict: str | None = None, camera_id: str | None = None,
              recipe: str | None = None, label: str | None = None,
              min_score: float | None = None, max_score: float | None = None,
              since: datetime | None = None, until: datetime | None = None,
              review_state: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[int, list[InspectionRow]]:
        q = select(InspectionRow)
        conds: list[Any] = []
        if verdict:
            conds.append(InspectionRow.verdict == verdict)
        if camera_id:
            conds.append(InspectionRow.camera_id == camera_id)
        if recipe:
            conds.append(InspectionRow.recipe_name == recipe)
        if label:
            conds.append(InspectionRow.labels.contains(f",{label},"))
        if min_score is not None:
            conds.append(InspectionRow.max_score >= min_score)
        if max_score is not None:
            conds.append(InspectionRow.max_score <= max_score)
        if since:
            conds.append(InspectionRow.created_at >= since)
        if until:
            conds.append(InspectionRow.created_at < until)
        if review_state == "reviewed":
            conds.append(InspectionRow.review_state != "unreviewed")
        elif review_state:
            conds.append(InspectionRow.review_state == review_state)
        with Session(self.engine) as s:
            total = s.scalar(select(func.count()).select_from(InspectionRow).where(*conds)) or 0
            rows = list(s.scalars(q.where(*conds).options(selectinload(InspectionRow.reviews))
                                  .order_by(InspectionRow.created_at.desc(), InspectionRow.id)
                                  .limit(limit).offset(offset)))
        return total, rows

    def get(self, inspection_id: str) -> InspectionRow:
        with Session(self.engine) as s:
            row = s.scalar(select(InspectionRow).where(InspectionRow.id == inspection_id)
                           .options(selectinload(InspectionRow.reviews)))
        if row is None:
            raise NotFoundError(f"no inspection {inspection_id!r}")
        return row

    def reference_file(self, row: InspectionRow) -> Path:
        if not row.reference_path:
            raise NotFoundError(f"inspection {row.id} has no stored reference image")
        return self.images_dir / row.reference_path

    def image_file(self, row: InspectionRow) -> Path:
        if not row.image_path:
            raise NotFoundError(f"inspection {row.id} has no stored image (passes are sampled)")
        return self.images_dir / row.image_path

    # -- reviews --------------------------------------------------------------------
    def review(self, inspection_id: str, *, reviewer: str, action: str,
               boxes: list[dict[str, Any]] | None = None, index: int | None = None,
               label: str | None = None, note: str = "") -> InspectionRow:
        """Record a review; the truth after it (``boxes`` of the review row) is what
        ``lineside data pull`` turns into training data."""
        if action not in ACTIONS:
            raise ConfigError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        with Session(self.engine) as s, s.begin():
            row = s.scalar(select(InspectionRow).where(InspectionRow.id == inspection_id)
                           .options(selectinload(InspectionRow.reviews)))
            if row is None:
                raise NotFoundError(f"no inspection {inspection_id!r}")
            truth = [dict(b) for b in (row.reviews[-1].boxes if row.reviews else
                                       [{"label": d["label"], "box": d["box"]} for d in row.defects])]
            if action == "false_reject":
                truth = []
            elif action == "missed_defect":
                if not boxes:
                    raise ConfigError("missed_defect needs the reviewer's boxes")
                truth += [self._check_box(b, row) for b in boxes]
            elif action == "relabel":
                if index is None or not 0 <= index < len(truth) or not label:
                    raise ConfigError(f"relabel needs an index in 0..{len(truth) - 1} and a label")
                if label not in row.class_names:
                    raise ConfigError(f"unknown class {label!r} (model classes: "
                                      f"{', '.join(row.class_names)})")
                truth[index]["label"] = label
            s.add(ReviewRow(inspection_id=row.id, created_at=datetime.now(UTC), reviewer=reviewer,
                            action=action, boxes=truth, note=note))
            row.review_state = "confirmed" if action == "confirm" else "corrected"
        return self.get(inspection_id)

    @staticmethod
    def _check_box(b: dict[str, Any], row: InspectionRow) -> dict[str, Any]:
        box, label = b.get("box"), b.get("label")
        if label not in row.class_names:
            raise ConfigError(f"unknown class {label!r} (model classes: {', '.join(row.class_names)})")
        if not isinstance(box, list) or len(box) != 4:
            raise ConfigError("box must be [x1, y1, x2, y2]")
        x1, y1, x2, y2 = (float(v) for v in box)
        if not (0 <= x1 < x2 <= row.width and 0 <= y1 < y2 <= row.height):
            raise ConfigError(f"box {box} must lie inside the {row.width}x{row.height} image "
                              "with x2 > x1 and y2 > y1")
        return {"label": label, "box": [x1, y1, x2, y2]}

    def stats(self, hours: int = 24) -> dict[str, Any]:
        """Dashboard figures: verdicts per hour, defects per class, review outcomes."""
        since = datetime.now(UTC) - timedelta(hours=hours)
        with Session(self.engine) as s:
            rows = s.execute(select(InspectionRow.created_at, InspectionRow.verdict,
                                    InspectionRow.labels, InspectionRow.review_state,
                                    InspectionRow.camera_id)
                             .where(InspectionRow.created_at >= since)).all()
            fr = s.scalar(select(func.count()).select_from(ReviewRow)
                          .where(ReviewRow.action == "false_reject")) or 0
            reviewed_fails = s.scalar(select(func.count()).select_from(InspectionRow).where(
                InspectionRow.verdict == "fail", or_(InspectionRow.review_state == "confirmed",
                                                     InspectionRow.review_state == "corrected"))) or 0
        per_hour: dict[str, dict[str, int]] = {}
        per_class: dict[str, int] = {}
        per_camera: dict[str, int] = {}
        for created, verdict, labels, _, camera in rows:
            key = created.strftime("%Y-%m-%d %H:00")
            per_hour.setdefault(key, {"pass": 0, "fail": 0})[verdict] += 1
            for lb in filter(None, (labels or "").split(",")):
                per_class[lb] = per_class.get(lb, 0) + 1
            per_camera[camera or "(upload)"] = per_camera.get(camera or "(upload)", 0) + 1
        return {"verdicts_per_hour": dict(sorted(per_hour.items())), "defects_per_class": per_class,
                "inspections_per_camera": per_camera, "reviewed_fails": reviewed_fails,
                "false_rejects_confirmed": fr,
                "false_reject_rate_reviewed": fr / reviewed_fails if reviewed_fails else None}
