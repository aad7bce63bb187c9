"""The gate: a candidate package replayed beside the model it would replace on a golden
set, through the edge runtime (the code that judges parts), each judged under the recipe's
rules at its own card's calibrated thresholds.

The candidate passes when it has no more escapes (a defective part passed) than the
model it replaces, passes no defective part that model fails (a new escape), and has no
more false rejects (a good part failed) than that model plus a configured allowance; a
golden set without a defective part cannot pass anyone (nothing would be compared).
The arithmetic (:func:`score`, :func:`decide`) is pure, so it is tested on its own;
:func:`run_gate` feeds it the replay.

A recipe that fuses a good-only model with its detector (``anomaly.model``) judges as the
line would, whichever of the two is gated: a part fails on a counted defect OR the anomaly
score. The other model of the fusion (the gate's ``partner``) runs once per image and is
shared by both verdicts: gating detectors, the good-only model's finding weighs in each
detector's; gating versions of the good-only model, the recipe's detector's detections are
fused with each version's finding. Without it, a candidate was charged escapes its partner
catches on the line, and false rejects the partner adds were counted for neither.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lineside_inspect.boxes import box_iou
from lineside_inspect.errors import ConfigError, GoldenSetError, ImageError
from lineside_inspect.imageio import decode_frame
from lineside_inspect.inspector import Inspection, anomaly_finding, inspect, with_finding
from lineside_inspect.lifecycle.golden import GoldenItem, GoldenLibrary, GoldenManifest
from lineside_inspect.opencv import MAX_IMAGE_PIXELS
from lineside_inspect.package import card_digest, default_recipe_name
from lineside_inspect.recipes import Recipe
from lineside_inspect.recipes.rules import roi_misses, roi_span
from lineside_inspect.references import Reference
from lineside_inspect.runtime.anomaly_map import AnomalyFinding
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.schemas import Outcome, Precision, TimeText

IOU_MATCH = 0.5  # a found box matches a true one of its class at this IoU or more


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def rules_of(recipe: Recipe) -> Recipe:
    """How to judge any model under ``recipe``: a model card's default recipe (its score
    floors are that card's calibrated thresholds) keeps its rules without the floors, so
    each model is judged at its own card's thresholds, not at its predecessor's. A recipe
    a line configured keeps its floors: they are the line's, whichever model serves."""
    if recipe.name != default_recipe_name(recipe.model):
        return recipe
    return recipe.model_copy(update={"min_score": {}, "default_min_score": None})


def rules_digest(recipe: Recipe) -> str:
    """sha256 of the rules a gate judges by under ``recipe`` (:func:`rules_of`). The
    good-only partner a fused recipe names is in them by name (and version, if pinned);
    which package judged is the report's ``fused_card_sha256``.

    Canonical: ``min_score`` and ``max_count`` by class name, ``critical`` sorted once
    each, as they judge alike in any order. It was of the recipe's fields as put, so the
    same recipe put again with its classes in another order (a YAML file rewritten, a
    form) had another digest, and its pass was refused as judged by other rules (review,
    session 43). A recipe already in that order has the digest it had (see
    :func:`rules_digests`)."""
    rules = rules_of(recipe)
    return _digest(rules.model_copy(update={
        "min_score": dict(sorted(rules.min_score.items())),
        "max_count": dict(sorted(rules.max_count.items())),
        "critical": sorted(set(rules.critical))}))


def rules_digests(recipe: Recipe) -> set[str]:
    """The digests a report judged under ``recipe``'s rules may keep: :func:`rules_digest`,
    and the one of its fields as put that reports made before session 43 kept."""
    return {rules_digest(recipe), _digest(rules_of(recipe))}


def _digest(rules: Recipe) -> str:
    # a recipe without tiling (session 44) keeps the digest it had before the field was
    return hashlib.sha256(rules.model_dump_json(
        exclude={"tiling"} if rules.tiling is None else None).encode()).hexdigest()


def gated_as(recipe: Recipe, model: str) -> Literal["model", "partner"]:
    """How versions of ``model`` are judged under ``recipe``: as the model it judges with
    (``model``), or as the good-only model it fuses with its detector (``partner``); a
    recipe that does neither is refused (:class:`ConfigError`)."""
    if recipe.model == model:
        return "model"
    fused = recipe.fused()
    if fused is not None and fused[0] == model:
        return "partner"
    raise ConfigError(f"recipe {recipe.name} judges model {recipe.model}, not {model}"
                      + ("" if fused is None else f", fused with good-only model {fused[0]}"))


class FusionPartner(NamedTuple):
    """The other model of a recipe's fusion, as versions of a gated model are judged
    with it (:func:`fusion_partner`)."""

    name: str
    pinned: str | None  # the version the recipe names; None: the active one judges
    detector: bool  # the recipe's detector: the gated model is the good-only one it fuses


def fusion_partner(recipe: Recipe, model: str) -> FusionPartner | None:
    """The other model of ``recipe``'s fusion that versions of ``model`` are judged with:
    the good-only model it fuses with its detector, or, when ``model`` is that good-only
    model (:func:`gated_as` ``partner``), its detector; None when it fuses none. One
    answer for the gate, which loads it, and for admission, which compares a pass's
    partner card with it: two copies of this rule could drift apart."""
    fused = recipe.fused()
    if fused is None:
        return None
    if gated_as(recipe, model) == "partner":
        return FusionPartner(recipe.model, recipe.model_version, detector=True)
    return FusionPartner(fused[0], fused[1], detector=False)


def check_partner(recipe: Recipe, partner: Detector | None, gated: Sequence[Detector]) -> None:
    """Refuse (:class:`ConfigError`) judging the ``gated`` versions under ``recipe`` with
    ``partner`` as the other model of its fusion when that is not the one the line judges
    them with (or none where the recipe fuses one): the gate would count escapes and false
    rejects of a verdict the line never gets. Versions of a detector take the good-only
    model the recipe fuses; versions of that good-only model take the recipe's detector."""
    wants = recipe.fused()
    if wants is None:
        if partner is not None:
            raise ConfigError(f"recipe {recipe.name} fuses no good-only model, and "
                              f"{partner.card.name} {partner.card.version} was given to fuse "
                              "with it")
        return
    name, version = wants
    if any(d.card.kind == "anomaly" for d in gated):
        _check_detector_partner(recipe, name, partner, gated)
        return
    if partner is None:
        raise ConfigError(f"recipe {recipe.name} fuses good-only model {name} with its "
                          "detector: the gate judges each detector with it, as the line does "
                          "(give its package)")
    card = partner.card
    if card.name != name or version not in (None, card.version) or card.kind != "anomaly":
        raise ConfigError(f"recipe {recipe.name} fuses good-only model {name}"
                          f"{'' if version is None else ' ' + version}; {card.kind} model "
                          f"{card.name} {card.version} was given in its place")


def _check_detector_partner(recipe: Recipe, name: str, partner: Detector | None,
                            gated: Sequence[Detector]) -> None:
    """:func:`check_partner` for versions of the good-only model ``name`` ``recipe`` fuses:
    each judged with the recipe's detector (the version it pins, if it pins one)."""
    for d in gated:
        if d.card.kind != "anomaly" or d.card.name != name:
            raise ConfigError(f"recipe {recipe.name} fuses good-only model {name} with "
                              f"detector {recipe.model}: {d.card.kind} model {d.card.name} "
                              f"{d.card.version} is not a version of {name}")
    pin = "" if recipe.model_version is None else f" {recipe.model_version}"
    if partner is None:
        raise ConfigError(f"recipe {recipe.name} fuses good-only model {name} with detector "
                          f"{recipe.model}{pin}: the gate judges each version of {name} with "
                          "that detector, as the line does (give its package)")
    card = partner.card
    if (card.name != recipe.model or recipe.model_version not in (None, card.version)
            or card.kind == "anomaly"):
        raise ConfigError(f"recipe {recipe.name} fuses good-only model {name} with detector "
                          f"{recipe.model}{pin}; {card.kind} model {card.name} {card.version} "
                          "was given in its place")


@dataclass(frozen=True)
class Found:
    """One model's result on one golden image."""

    verdict: Outcome
    boxes: list[tuple[str, float, tuple[float, float, float, float]]]  # label, score, xyxy
    ms: float  # preprocess + infer + postprocess


def matched_boxes(truth: list[tuple[str, tuple[float, float, float, float]]],
                  found: list[tuple[str, float, tuple[float, float, float, float]]],
                  iou: float = IOU_MATCH) -> int:
    """True boxes matched by found boxes of the same class (IoU >= ``iou``), each used once,
    the highest-scoring found box first (as COCO matches)."""
    used = [False] * len(truth)
    matched = 0
    for label, _, box in sorted(found, key=lambda f: -f[1]):
        best, best_iou = -1, iou
        for j, (t_label, t_box) in enumerate(truth):
            if used[j] or t_label != label:
                continue
            v = box_iou(box, t_box)
            if v >= best_iou:
                best, best_iou = j, v
        if best >= 0:
            used[best] = True
            matched += 1
    return matched


class ModelScore(_Shape):
    """One model on the golden set."""

    model: str
    version: str
    sha256: str
    card_sha256: str | None = Field(None, description=(
        "of the whole card (thresholds included); None in reports made before it was kept"))
    precision: Precision = Field(description="of the graph")
    images: int
    expected_fail: int
    expected_pass: int
    escapes: int = Field(description="images expected to fail that passed")
    new_escapes: int = Field(0, description=(
        "images expected to fail that this model passed and the other model failed"))
    false_rejects: int = Field(description="images expected to pass that failed")
    defect_recall: float | None = Field(description=(
        "true boxes found (same class, IoU >= 0.5) over true boxes, on images whose boxes "
        "are known; None without any"))
    defect_precision: float | None = Field(description=(
        "found boxes matching a true one over found boxes, on images whose boxes are known"))
    boxes_true: int
    boxes_found: int
    boxes_matched: int
    latency_p50_ms: float = Field(description="preprocess + infer + postprocess per image")
    latency_p95_ms: float


class Disagreement(_Shape):
    sha256: str
    source: str
    expected: Outcome
    against: Outcome
    candidate: Outcome
    against_labels: list[str]
    candidate_labels: list[str]


class GoldenRef(_Shape):
    name: str
    version: int
    digest: str
    items: int


class GateReport(_Shape):
    id: str
    created_at: TimeText
    passed: bool
    reasons: list[str] = Field(description="why it failed (empty when it passed)")
    golden: GoldenRef
    recipe: str = Field(description="the recipe whose rules judged both (at each card's thresholds)")
    recipe_sha256: str | None = Field(None, description=(
        "of those rules as applied (a recipe replaced under the same name has another); None "
        "in reports made before it was kept"))
    fused_with: str | None = Field(None, description=(
        "the other model (name version) of the recipe's fusion of a detector with a "
        "good-only model, run once per image and weighed in both verdicts, as the line "
        "judges (fused_kind says which it is); None when the recipe fuses none, and in "
        "reports made before a gate fused it (those judged the detectors alone)"))
    fused_kind: Literal["anomaly", "detector"] | None = Field(None, description=(
        "anomaly: fused_with is the good-only model fused with each gated detector version "
        "(its finding in both verdicts); detector: fused_with is the recipe's detector, the "
        "gated versions are of its good-only model (its detections fused with each one's "
        "finding). None in reports made before versions of a good-only model were gated as "
        "a partner: a fused_with there is a good-only model"))
    fused_card_sha256: str | None = Field(None, description=(
        "of that model's whole card (graph and thresholds)"))
    false_reject_allowance: int
    candidate: ModelScore
    against: ModelScore
    disagreements: list[Disagreement] = Field(description="images the two verdicts differ on")
    will_not_admit: str | None = Field(None, description=(
        "why this report admits nothing on the server that ran it, whatever it says: it was "
        "run on a golden set other than the one lifecycle.gate.golden names for the model "
        "(with the gate call on that one); None otherwise, and in reports made before "
        "session 47"))


def score(items: list[GoldenItem], results: list[Found], *, model: str, version: str, sha256: str,
          precision: str, other: list[Found] | None = None,
          card_sha256: str | None = None) -> ModelScore:
    """``other``: the other model's results on the same items (for new escapes)."""
    escapes = new_escapes = false_rejects = truth_n = found_n = matched = 0
    for n, (item, r) in enumerate(zip(items, results, strict=True)):
        if item.expected == "fail" and r.verdict == "pass":
            escapes += 1
            new_escapes += other is not None and other[n].verdict == "fail"
        elif item.expected == "pass" and r.verdict == "fail":
            false_rejects += 1
        if item.boxes is not None:
            truth = [(b.label, b.box) for b in item.boxes]
            truth_n += len(truth)
            found_n += len(r.boxes)
            matched += matched_boxes(truth, r.boxes)
    fails = sum(1 for i in items if i.expected == "fail")
    ms = [r.ms for r in results] or [0.0]
    return ModelScore(
        model=model, version=version, sha256=sha256, card_sha256=card_sha256,
        precision=precision, images=len(items),
        expected_fail=fails, expected_pass=len(items) - fails, escapes=escapes,
        new_escapes=new_escapes,
        false_rejects=false_rejects,
        defect_recall=matched / truth_n if truth_n else None,
        defect_precision=matched / found_n if found_n else None,
        boxes_true=truth_n, boxes_found=found_n, boxes_matched=matched,
        latency_p50_ms=round(float(np.percentile(ms, 50)), 2),
        latency_p95_ms=round(float(np.percentile(ms, 95)), 2))


def decide(candidate: ModelScore, against: ModelScore, allowance: int) -> list[str]:
    """Why ``candidate`` may not replace ``against`` (empty: it may)."""
    reasons = []
    if candidate.expected_fail == 0:
        reasons.append("the golden set has no defective part: escapes cannot be compared "
                       "(add defective parts: golden add --bad FOLDER, a --data split with defects, or "
                       "reviewed fails)")
    if candidate.escapes > against.escapes:
        reasons.append(f"{candidate.escapes} escape(s) on the golden set, {against.escapes} "
                       f"for {against.model} {against.version}: a candidate may not pass more "
                       "defective parts")
    elif candidate.new_escapes:
        reasons.append(f"{candidate.new_escapes} defective part(s) that {against.model} "
                       f"{against.version} fails would pass (new escapes; the disagreements "
                       "list them)")
    if candidate.false_rejects > against.false_rejects + allowance:
        reasons.append(f"{candidate.false_rejects} false reject(s), over the "
                       f"{against.false_rejects} of {against.model} {against.version} plus the "
                       f"allowance of {allowance}")
    return reasons


def disagreements(items: list[GoldenItem], cand: list[Found], against: list[Found]) -> list[Disagreement]:
    return [Disagreement(sha256=i.sha256, source=i.source, expected=i.expected, against=a.verdict,
                         candidate=c.verdict, against_labels=sorted(b[0] for b in a.boxes),
                         candidate_labels=sorted(b[0] for b in c.boxes))
            for i, c, a in zip(items, cand, against, strict=True) if c.verdict != a.verdict]


def _found(detector: Detector, image: np.ndarray, recipe: Recipe, ref: Reference | None,
           finding: AnomalyFinding | None = None) -> Found:
    result = inspect(image, detector, recipe, reference=ref, anomaly_finding=finding)
    t = result.timings_ms
    return _found_of(result, t["preprocess"] + t["infer"] + t["postprocess"])


def _found_of(result: Inspection, ms: float) -> Found:
    return Found(result.verdict, [(label, float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                                  for label, s, b in zip(result.defects.labels, result.defects.scores,
                                                         result.defects.xyxy, strict=True)], ms)


def _fused_found(done: Inspection, model: Detector, image: np.ndarray,
                 recipe: Recipe) -> Found:
    """Good-only ``model``'s result on ``image`` fused with the detector's inspection
    ``done`` of it, as the line judges; its time is the good-only model's own."""
    t0 = time.perf_counter()
    unchanged = done.gate is not None and done.gate.unchanged  # inspect runs no model there
    finding = None if unchanged else anomaly_finding(image, model, recipe)
    result = with_finding(done, model, finding)
    return _found_of(result, (time.perf_counter() - t0) * 1000)


def replay(detectors: list[Detector], library: GoldenLibrary, manifest: GoldenManifest,
           recipe: Recipe, *, max_pixels: int | None = None,
           progress: Callable[[int, int], None] | None = None,
           partner: Detector | None = None) -> list[list[Found]]:
    """Each model's results on each item, image by image (each image decoded once and
    run through every model in turn, so they see the same machine load). ``partner``: the
    other model of the fusion ``recipe`` makes (:func:`check_partner`), run once per image:
    the good-only model, whose finding weighs in every detector's verdict, or, for
    versions of that good-only model, the recipe's detector, whose detections are fused
    with each version's finding. Its time is in no model's.

    Each image is decoded as the service decodes a frame it judges
    (:func:`~lineside_inspect.imageio.decode_frame`: a grey JPEG stays grey) and its
    reference as the service decodes a golden (:meth:`Reference.from_bytes`), both under
    ``max_pixels``, the server's (None: the built-in limit, ``LINESIDE_MAX_IMAGE_PIXELS``)."""
    check_partner(recipe, partner, detectors)
    pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    rules = rules_of(recipe)
    fixed = partner if partner is not None and partner.card.kind != "anomaly" else None
    takes_reference = [*detectors, *([] if fixed is None else [fixed])]
    results: list[list[Found]] = [[] for _ in detectors]
    for n, item in enumerate(manifest.items):
        data = library.read(manifest, item)
        what = ""
        ref = None
        try:  # a set made before items were decoded in full may hold a truncated file
            image = decode_frame(data, pixels)
            if any(d.needs_reference for d in takes_reference):
                if item.reference is None:
                    raise GoldenSetError(
                        f"golden set {manifest.ref}: {item.source} has no reference image, "
                        "which a reference model needs")
                what = "its reference image: "
                # its own: read, and decoded unless grey (a golden is decoded in colour)
                ref = (Reference.from_bytes(None, data, pixels,
                                            image=image if image.ndim == 3 else None)
                       if item.reference == item.sha256 else
                       Reference.from_bytes(None, library.read(manifest, item, reference=True),
                                            pixels))
        except ImageError as exc:
            raise GoldenSetError(f"golden set {manifest.ref}: {item.source or item.sha256}: "
                                 f"{what}{exc.message}") from None
        if roi_misses(rules, image.shape[1], image.shape[0]):
            # inspect's refusal said "draw the roi in this camera's frame pixels", naming
            # neither the set nor the image: the roi may be the line's, the image a
            # stranger's (another camera's frames; session 54 review)
            raise GoldenSetError(
                f"golden set {manifest.ref}: {item.source or item.sha256} is a "
                f"{image.shape[1]}x{image.shape[0]} image, and recipe {rules.name} version "
                f"{rules.version}'s roi ({roi_span(rules)}) lies wholly outside it: no defect "
                "could count there, so the gate would compare passes alone. Gate under a "
                "recipe whose roi fits the set's images, or make the set of this line's frames")
        if fixed is not None:  # versions of its good-only model: the detector runs once
            done = inspect(image, fixed, rules, reference=ref if fixed.needs_reference else None)
            for model, out in zip(detectors, results, strict=True):
                out.append(_fused_found(done, model, image, rules))
        else:
            finding = None if partner is None else anomaly_finding(image, partner, rules)
            for det, out in zip(detectors, results, strict=True):
                out.append(_found(det, image, rules, ref if det.needs_reference else None,
                                  finding))
        if progress is not None:
            progress(n + 1, len(manifest.items))
    return results


def run_gate(candidate: Detector, against: Detector, library: GoldenLibrary,
             manifest: GoldenManifest, recipe: Recipe, *, allowance: int = 0,
             max_pixels: int | None = None, partner: Detector | None = None) -> GateReport:
    """Replay ``manifest`` through ``candidate`` and ``against`` and decide. ``partner``:
    the other model of the fusion ``recipe`` makes of a detector with a good-only model
    (required when it fuses one, refused when it fuses none): the good-only model for
    versions of the detector, the detector for versions of the good-only model. Both are
    judged with it, as the line would be."""
    check_partner(recipe, partner, (candidate, against))
    if not manifest.items:
        raise GoldenSetError(f"golden set {manifest.ref} is empty")
    for det in (candidate, against):
        det.forward(np.zeros((1, 3, det.size, det.size), dtype=np.uint8))  # warm: fair latency
    cand, ag = replay([candidate, against], library, manifest, recipe, max_pixels=max_pixels,
                      partner=partner)

    def scored(det: Detector, found: list[Found], other: list[Found]) -> ModelScore:
        c = det.card
        return score(manifest.items, found, model=c.name, version=c.version, sha256=c.sha256,
                     precision=c.precision, other=other, card_sha256=card_digest(c))

    cs, as_ = scored(candidate, cand, ag), scored(against, ag, cand)
    reasons = decide(cs, as_, allowance)
    return GateReport(
        id=uuid.uuid4().hex, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        passed=not reasons, reasons=reasons,
        golden=GoldenRef(name=manifest.name, version=manifest.version, digest=manifest.digest,
                         items=len(manifest.items)),
        recipe=recipe.name, recipe_sha256=rules_digest(recipe),
        fused_with=None if partner is None else f"{partner.card.name} {partner.card.version}",
        fused_kind=None if partner is None else partner.card.kind,
        fused_card_sha256=None if partner is None else card_digest(partner.card),
        false_reject_allowance=allowance, candidate=cs, against=as_,
        disagreements=disagreements(manifest.items, cand, ag))


def _fused_note(report: GateReport) -> str:
    if report.fused_with is None:
        return ""
    if report.fused_kind == "detector":
        return (f", fused with detector {report.fused_with} (run once per image, its "
                "detections fused with each version's finding; its time in neither latency)")
    return (f", fused with good-only {report.fused_with} (its finding in both verdicts; "
            "its time in neither latency)")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_report(report: GateReport, *, max_rows: int = 50, kept: bool = True) -> str:
    """The report as Markdown: the figures side by side, the disagreements by image.
    ``kept`` False (the CLI's gate, which keeps none): its id is left out, naming nothing."""
    a, c = report.against, report.candidate
    g = report.golden
    lines = [
        f"gate: {c.model} {c.version} ({c.precision}) against {a.model} {a.version} "
        f"({a.precision}) on golden set {g.name}:{g.version} ({g.items} images: "
        f"{a.expected_fail} defective, {a.expected_pass} good; digest {g.digest[:12]}), "
        f"recipe {report.recipe} at each card's thresholds"
        + _fused_note(report),
        "",
        f"| | against {a.version} | candidate {c.version} |",
        "|---|---|---|",
        f"| escapes (of {a.expected_fail} defective) | {a.escapes} | {c.escapes} |",
        f"| of them new (the other fails them) | {a.new_escapes} | {c.new_escapes} |",
        f"| false rejects (of {a.expected_pass} good) | {a.false_rejects} | {c.false_rejects} |",
        f"| defect recall (IoU >= {IOU_MATCH}) | {_fmt(a.defect_recall)} | {_fmt(c.defect_recall)} |",
        f"| defect precision | {_fmt(a.defect_precision)} | {_fmt(c.defect_precision)} |",
        f"| boxes found / matched (of {a.boxes_true} true) | {a.boxes_found} / {a.boxes_matched} | "
        f"{c.boxes_found} / {c.boxes_matched} |",
        f"| latency p50 / p95 | {a.latency_p50_ms:.1f} / {a.latency_p95_ms:.1f} ms | "
        f"{c.latency_p50_ms:.1f} / {c.latency_p95_ms:.1f} ms |",
        "",
        f"disagreements: {len(report.disagreements)} image(s)",
    ]
    if report.disagreements:
        lines += ["", f"| image | expected | against {a.version} | candidate {c.version} |",
                  "|---|---|---|---|"]
        for d in report.disagreements[:max_rows]:
            lines.append(f"| {d.source or d.sha256[:12]} | {d.expected} | {d.against} "
                         f"{','.join(d.against_labels)} | {d.candidate} {','.join(d.candidate_labels)} |")
        if len(report.disagreements) > max_rows:
            lines.append(f"| ... and {len(report.disagreements) - max_rows} more | | | |")
    lines += ["", "PASSED" if report.passed else "FAILED: " + "; ".join(report.reasons),
              f"(allowance {report.false_reject_allowance} extra false reject(s)"
              + (f"; report {report.id})" if kept else "; this report is not kept)")]
    return "\n".join(lines)
