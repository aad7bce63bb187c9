"""The HTTP contract of an inspection, as pydantic models.

One shape for a verdict wherever it goes: the answer to ``POST /v1/inspect`` and to a
camera trigger (:class:`InspectionResult`), the stored record the review API pages
through (:class:`StoredInspection`, the same fields plus what the store and reviewers
add), and later the events line outputs publish. Routes declare them as
``response_model`` so ``/docs`` and ``openapi.json`` describe what is sent.

Boxes are ``[x1, y1, x2, y2]`` in the pixels of the image as sent (its header's size,
EXIF orientation ignored); scores are in [0, 1]; times are UTC with an offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

# Named: OpenAPI has one component for each (#/components/schemas/Verdict). Inline
# Literals made a generated client define an enum per field that uses one, six for a
# verdict alone (InspectionResultVerdict, StoredInspectionVerdict, ...).
Verdict = TypeAliasType("Verdict", Literal["pass", "fail"])
Outcome = Verdict
ReviewAction = TypeAliasType(
    "ReviewAction", Literal["confirm", "false_reject", "missed_defect", "relabel", "remove_box"])
Precision = TypeAliasType("Precision", Literal["fp32", "fp16", "int8"])


def _iso_time(value: str) -> str:
    if datetime.fromisoformat(value).tzinfo is None:  # ValueError for what is no time
        raise ValueError("a time needs its UTC offset")
    return value


# a time kept as the text it was written as (golden manifests, gate reports): declared a
# date-time, as datetime fields are, where a bare string gave clients a str to parse
TimeText = Annotated[str, AfterValidator(_iso_time), Field(json_schema_extra={"format": "date-time"})]
Box = tuple[float, float, float, float]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Defect(_Shape):
    label: str = Field(description="class name")
    score: float = Field(ge=0, le=1)
    box: Box = Field(description="[x1, y1, x2, y2] in the image's pixels")


class Reason(_Shape):
    """Why a part failed: one recipe rule broken by one class (``anomaly``: a good-only
    model's image score reached its threshold; ``count`` is then its regions reported;
    ``reference_mismatch``: the frame differs from its golden image in more than half of
    the unchanged gate's tiles, ``count`` of ``allowed``: not the golden's view at all;
    ``blank_frame``: the frame, or its golden (``label``), spans ``count`` grey levels, under
    the recipe's ``allowed`` minimum: nothing on it can be judged)."""

    rule: Literal["critical", "max_count", "anomaly", "reference_mismatch", "blank_frame"]
    label: str
    count: int = Field(ge=0, description="defects of this class counted")
    allowed: int = Field(ge=0, description="defects of this class the recipe allows")
    message: str
    score: float | None = Field(None, ge=0, le=1, description="rule anomaly: the image score")
    threshold: float | None = Field(None, ge=0, le=1,
                                    description="rule anomaly: the score at which a part fails")


class RecipeRef(_Shape):
    name: str
    version: str


class ModelRef(_Shape):
    name: str
    version: str
    sha256: str


class ReferenceUsed(_Shape):
    """The golden image a reference model compared the frame with."""

    name: str | None = Field(None, description="registered name; None when sent with the frame")
    sha256: str | None = None
    shift: tuple[float, float] | None = Field(
        None, description="align_reference: (dx, dy) px the frame was moved onto it")
    has_image: bool | None = Field(None, description="stored records: the store kept a copy")
    unchanged: bool | None = Field(None, description=(
        "recipe unchanged_gate: true when the frame matched the reference everywhere and "
        "the part passed without running the detector"))
    difference: float | None = Field(None, description=(
        "recipe unchanged_gate: the highest tile score (grey levels beyond the tolerance band)"))


class Timings(_Shape):
    decode: float
    preprocess: float = Field(description=(
        "the frame's contrast check (blank_frame), a recipe's unchanged gate, and the "
        "model input made from the frame (and its golden)"))
    infer: float
    postprocess: float
    total: float


# what Lineside makes an inspection id (uuid4 hex); also what it accepts from another box
INSPECTION_ID = r"^[0-9a-f]{32}$"


class InspectionResult(_Shape):
    """A verdict as the line hears it."""

    id: str = Field(pattern=INSPECTION_ID)
    created_at: datetime
    verdict: Outcome
    reasons: list[Reason]
    defects: list[Defect] = Field(description="the defects the recipe counted")
    recipe: RecipeRef
    model: ModelRef
    camera_id: str | None = None
    part_id: str | None = None
    timings_ms: Timings
    reference: ReferenceUsed | None = None
    stored: bool = Field(description=(
        "the inspection is in the store's journal: it survives the server being killed, "
        "and power loss once the journal is synced (see README, 'What stored means')"))
    frame_timestamp: float | None = Field(None, description="camera triggers: capture time (epoch s)")
    frame_age_ms: float | None = Field(None, description="camera triggers: frame age when judged")
    trigger_to_frame_ms: float | None = Field(
        None, description="camera triggers: from the trigger to the frame's capture")
    # sent only for a tiled frame: an answer or stored record of a frame judged whole is as
    # before (a strict reader of an older release takes it). Stored since session 47 (rows
    # from before have none); forwarded only to a hub that announced RECORD_TILES
    # (fleet/protocol.py)
    tiles: int | None = Field(None, ge=1, exclude_if=lambda n: n is None, description=(
        "a recipe's tiling cut the frame into this many tiles, a forward pass each "
        "(timings_ms.infer is all of them); absent when the frame was judged whole, and "
        "in records stored before session 47 or forwarded by a box or to a hub of an "
        "earlier release"))


class TruthBox(_Shape):
    label: str
    box: Box


class ReviewEntry(_Shape):
    id: int
    created_at: datetime
    reviewer: str
    action: ReviewAction
    boxes: list[TruthBox] = Field(description="the reviewed truth after this review")
    note: str
    # sent only by GET /v1/inspections/{id} (and a review's answer): the list leaves it
    # out, as a data pull of a release before it refuses a field it does not know
    origin: Literal["box", "hub"] | None = Field(None, exclude_if=lambda o: o is None, description=(
        "where the review was made: 'hub' by a reviewer on the fleet hub (a box keeps the "
        "hub's reviews of its inspections), 'box' on a box; sent by GET /v1/inspections/{id} "
        "and a review's answer only (session 52)"))


class StoredInspection(InspectionResult):
    """An inspection as the store keeps it, with its reviews."""

    box_id: str | None = Field(None, description="the edge box that made it")
    class_names: list[str]
    width: int
    height: int
    has_image: bool
    review_state: Literal["unreviewed", "confirmed", "corrected"]
    reviews: list[ReviewEntry]


class PullNote(_Shape):
    """What ``lineside data pull`` (its defaults) does with an inspection's current truth,
    by the pull's own rules (``store/pull_rules.py``)."""

    kept: bool = Field(description=(
        "the pull takes it (a reviewed inspection; an unreviewed one only with "
        "--no-reviewed), its images permitting"))
    reason: str | None = Field(description=(
        "why the pull leaves it out, as nothing a detector learns from, and what to do "
        "about it: the words `lineside data pull` logs for it (null when kept)"))


class InspectionDetail(StoredInspection):
    """One inspection as the review page reads it: the stored record, and what a training
    pull does with it (the list's items carry no ``pull``: a data pull of a release before
    it refuses a field it does not know)."""

    pull: PullNote = Field(description=(
        "whether `lineside data pull` leaves this inspection out as it is now reviewed, "
        "and why (session 51)"))


class InspectionPage(_Shape):
    """A window of ``limit`` stored inspections from ``offset``, newest first: ``items``
    are those that read as inspections, ``left_out`` the others (session 40)."""

    total: int = Field(description="stored inspections matching, those left out included")
    limit: int
    offset: int
    items: list[StoredInspection]
    # sent only when some were: a data pull of a release before it (which refuses a field
    # it does not know) reads a page with none as it did
    left_out: int = Field(0, ge=0, exclude_if=lambda n: n == 0, description=(
        "inspections of this page left out: stored fields that do not read as an "
        "inspection (a hand-edited row, another writer's; GET /v1/inspections/{id} names "
        "what is wrong). items + left_out is the page's share of total: the next page is "
        "at offset + limit, not offset + len(items)"))
