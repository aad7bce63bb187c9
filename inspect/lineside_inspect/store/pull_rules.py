"""Which stored inspections ``lineside data pull`` leaves out as nothing a detector learns
from, and why: the one place the rules live. The pull (``store/pull.py``) asks
:func:`left_out_why` before it reads an inspection's images; the review API answers the
same function's word for one inspection (``GET /v1/inspections/{id}``'s ``pull``), and the
review page shows it as text. The page had its own copy of the rules in JavaScript, which
could drift from the pull's (session 51).

Light on purpose (no HTTP client, no image code): the server imports it.
"""

from __future__ import annotations

from typing import Any

from lineside_inspect.package import ANOMALY_LABEL
from lineside_inspect.schemas import InspectionDetail, PullNote, StoredInspection
from lineside_inspect.store.models import reviewed_verdict


def located(item: dict[str, Any], boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``boxes`` that say where: not the whole image as ``anomaly``, which an anomaly fail
    whose map showed no region reports (session 39): as a label, it taught a detector that
    the whole frame is the defect, where such a part had been left out."""
    whole = [0.0, 0.0, float(item["width"]), float(item["height"])]
    return [b for b in boxes
            if b["label"] != ANOMALY_LABEL or [float(v) for v in b["box"]] != whole]


def truth(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The boxes its last review left (the model's defects when unreviewed)."""
    return item["reviews"][-1]["boxes"] if item["reviews"] else item["defects"]


def unboxed_fail(item: dict[str, Any]) -> bool:
    """A fail its last review confirmed with no defect box (a frame not of the golden's
    view, an anomaly with no region): not a good part, and nothing a detector can learn
    from. Pulled, it became a good image of the set (QA review, session 34)."""
    reviews = [(r["action"], r["boxes"]) for r in item["reviews"]]
    if not reviews:
        # an unreviewed one (``--no-reviewed``) is the model's word: a fail with no box
        # (reference_mismatch, an anomaly without a region) became a good image (loop review)
        return (item.get("review_state") == "unreviewed" and item["verdict"] == "fail"
                and not located(item, item["defects"]))
    return (not located(item, reviews[-1][1])
            and reviewed_verdict(item["verdict"], reviews) == "fail")


def anomaly_labelled(item: dict[str, Any]) -> bool:
    """Whether its truth still holds an ``anomaly`` box that says where (a good-only
    model's region, alone or in a fused recipe, confirmed or drawn as such): a defect of no
    class. Pulled, it became a class ``anomaly`` no detector's config has, and `lineside
    train --merge` refused the whole pull for it; with its box dropped, the defect would
    be taught as background. Such an inspection is left out, said at the end (loop walk,
    session 50); relabelled on the review page with a detector class it is pulled, and
    ``data pull --keep-anomaly`` keeps it as it is (a good-only model's evaluation set)."""
    return any(b["label"] == ANOMALY_LABEL for b in located(item, truth(item)))


def _detector_classes(item: dict[str, Any]) -> bool:
    """Whether its model has a class besides ``anomaly`` (a fused recipe's detector): a
    good-only model's review page can label a box with nothing else."""
    return any(n != ANOMALY_LABEL for n in item.get("class_names") or [])


KEEP = ("`lineside data pull --keep-anomaly` pulls it as class `anomaly`, a set to evaluate "
        "a good-only model on, not to train a detector")
UNBOXED = ("a fail with no defect box (confirmed, or unreviewed): not a good part, and "
           "nothing a detector can learn from; draw its defect on the review page to pull it")
UNBOXED_GOOD_ONLY = (f"{UNBOXED} (as `anomaly`, this model's one class: then {KEEP})")
ANOMALOUS = ("its defect boxes include `anomaly` (a good-only model's region), no class a "
             "detector can learn: relabel each such box with a defect class on the review "
             f"page (or mark a false reject) to pull it; {KEEP}")
ANOMALOUS_GOOD_ONLY = ("its defect boxes are `anomaly` (a good-only model's region), this "
                       f"model's one class and no class a detector can learn; {KEEP}")


def left_out_why(item: dict[str, Any], *, keep_anomaly: bool = False) -> str | None:
    """Why ``lineside data pull`` leaves ``item`` (a stored inspection as its JSON, as
    ``GET /v1/inspections`` lists it) out as nothing a detector learns from, with what to
    do about it; None when the pull takes it (its images permitting). ``keep_anomaly``:
    ``data pull --keep-anomaly``. Which inspections a pull lists (reviewed ones by default,
    a part's, since a time) is its query's, not a rule of this."""
    if unboxed_fail(item):
        return UNBOXED if _detector_classes(item) else UNBOXED_GOOD_ONLY
    if not keep_anomaly and anomaly_labelled(item):
        return ANOMALOUS if _detector_classes(item) else ANOMALOUS_GOOD_ONLY
    return None


def pull_note(item: dict[str, Any]) -> PullNote:
    """:func:`left_out_why` of ``item`` with the pull's defaults, as the review API says it."""
    why = left_out_why(item)
    return PullNote(kept=why is None, reason=why)


def with_pull(record: StoredInspection) -> InspectionDetail:
    """``record`` as ``GET /v1/inspections/{id}`` answers it: with :func:`pull_note` of the
    record as the pull reads it (its JSON, as ``GET /v1/inspections`` lists it)."""
    return InspectionDetail.model_validate(
        {**record.model_dump(), "pull": pull_note(record.model_dump(mode="json"))})
