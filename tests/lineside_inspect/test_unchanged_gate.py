"""The unchanged-part gate: a reference station passes a part that matches its golden
image without running the detector, and never passes one that differs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.bench import rephotographed
from lineside_inspect.errors import ConfigError
from lineside_inspect.imageio import read_image
from lineside_inspect.inspector import inspect
from lineside_inspect.opencv import cv2
from lineside_inspect.recipes import Recipe
from lineside_inspect.references import Reference
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.runtime.unchanged import UnchangedGate, calibrate_floor, check

ROOT = Path(__file__).resolve().parents[2]
STATION = ROOT / "configs" / "line"
REF_MODEL = ROOT / "models" / "deeppcb-ref" / "1"
SINGLE_MODEL = ROOT / "models" / "deeppcb" / "1"


def _reference() -> Reference:
    image = read_image(STATION / "station1-reference.jpg")
    return Reference.from_bytes("station1", cv2.imencode(".png", image)[1].tobytes(), image=image)


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    return np.asarray(cv2.warpAffine(image, m, (image.shape[1], image.shape[0]),
                                     borderMode=cv2.BORDER_REPLICATE))


def _gate() -> UnchangedGate:
    ref = _reference().image
    rng = np.random.default_rng(1)
    c = calibrate_floor([(rephotographed(ref, rng), ref) for _ in range(12)])
    assert c["good_pairs"] == 12 and c["floor"] >= c["highest_good_score"]
    return UnchangedGate(floor=c["floor"])


def test_good_parts_pass_defects_never_do() -> None:
    gate = _gate()
    ref = _reference().image
    rng = np.random.default_rng(2)
    # re-photographed good parts (noise, gain, JPEG, up to 2 px off) and a brighter lamp
    for _ in range(8):
        assert check(rephotographed(ref, rng), ref, gate).unchanged
    brighter = cv2.convertScaleAbs(ref, alpha=1.1, beta=8)
    assert check(brighter, ref, gate).unchanged
    # a 4x4 speck of the wrong colour on copper or on the substrate is a change
    for y, x in ((100, 100), (300, 420), (500, 200)):
        spoiled = ref.copy()
        patch = spoiled[y:y + 4, x:x + 4]
        spoiled[y:y + 4, x:x + 4] = 255 - patch.mean().astype(np.uint8)
        result = check(rephotographed(spoiled, rng), ref, gate)
        assert not result.unchanged and result.changed_tiles >= 1, (y, x, result)
    # the station's defective part, and a part off by more than the tolerance
    part = read_image(STATION / "station1" / "part-0002.jpg")
    assert not check(part, ref, gate).unchanged
    assert not check(_shift(ref, 8, 0), ref, gate).unchanged


def test_a_flat_reference_does_not_flatten_the_frame() -> None:
    # DeepPCB has boards whose template is plain white; a few dark specks on the frame made
    # the brightness matching scale the frame's contrast to zero (3 escapes in 452)
    ref = np.full((256, 256, 3), 255, np.uint8)
    frame = ref.copy()
    frame[100:104, 60:64] = 0
    assert not check(frame, ref, UnchangedGate(floor=15)).unchanged
    assert check(ref.copy(), ref, UnchangedGate(floor=15)).unchanged


def test_inspect_skips_the_detector_only_for_unchanged_parts() -> None:
    det = Detector(REF_MODEL, device="cpu", threads=1)
    reference = _reference()
    recipe = Recipe(name="gated", model=det.card.name, align_reference=True, unchanged_gate=_gate())
    rng = np.random.default_rng(3)
    good = inspect(rephotographed(reference.image, rng), det, recipe, reference=reference)
    body = good.to_json()
    assert good.verdict == "pass" and body["reference"]["unchanged"] is True
    assert body["timings_ms"]["infer"] == 0 and body["defects"] == []
    # a defective part goes through the detector as without the gate, with the same verdict
    part = read_image(STATION / "station1" / "part-0002.jpg")
    gated = inspect(part, det, recipe, reference=reference)
    plain = inspect(part, det, Recipe(name="plain", model=det.card.name, align_reference=True),
                    reference=reference)
    assert gated.to_json()["reference"]["unchanged"] is False
    assert gated.verdict == plain.verdict == "fail"
    assert gated.timings_ms["infer"] > 0
    assert gated.defects.to_json() == plain.defects.to_json()


def test_the_contrast_check_and_the_gate_are_timed_as_preprocessing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The contrast check (blank_frame) ran before any stage's clock started, and so did
    an unchanged gate that did not pass: neither was in ``timings_ms``, so its stages and
    ``total`` came short of what the part took (review, session 39). Both are counted in
    ``preprocess``, the contract's keys unchanged, on each of the three paths."""
    import time

    from lineside_inspect import inspector

    spent: list[float] = []

    def timed(real: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = real(*args, **kwargs)
            time.sleep(0.02)  # longer than the rest of preprocessing: a share left out shows
            spent.append((time.perf_counter() - t0) * 1000)
            return out
        return run

    # the real checks, each timed as it runs
    monkeypatch.setattr(inspector, "blank_view", timed(inspector.blank_view))
    monkeypatch.setattr(inspector, "check_unchanged", timed(inspector.check_unchanged))
    det = Detector(REF_MODEL, device="cpu", threads=1)
    reference = _reference()
    gated = Recipe(name="gated", model=det.card.name, unchanged_gate=_gate())
    plain = Recipe(name="plain", model=det.card.name)
    good = rephotographed(reference.image, np.random.default_rng(3))
    part = read_image(STATION / "station1" / "part-0002.jpg")
    for recipe, frame, unchanged in ((gated, good, True), (gated, part, False), (plain, part, None)):
        spent.clear()
        result = inspect(frame, det, recipe, reference=reference)
        assert (None if result.gate is None else result.gate.unchanged) is unchanged
        assert len(spent) == (1 if unchanged is None else 2)  # the check, and the gate
        t = result.timings_ms
        assert set(result.to_json()["timings_ms"]) == {"decode", "preprocess", "infer",
                                                       "postprocess", "total"}
        assert t["preprocess"] >= sum(spent), (recipe.name, t, spent)
        assert t["total"] == sum(v for k, v in t.items() if k != "total")


def test_a_gate_on_a_model_without_reference_is_refused() -> None:
    from lineside_inspect.server.registry import Registry

    reg = Registry(device="cpu", threads=1)
    reg.load_model(SINGLE_MODEL)
    with pytest.raises(ConfigError, match="unchanged_gate compares each frame with its reference"):
        reg.add_recipe(Recipe(name="r", model="deeppcb", unchanged_gate=UnchangedGate(floor=20)))
    # nor alignment, which was accepted and then did nothing
    with pytest.raises(ConfigError, match="align_reference moves each frame onto its reference"):
        reg.add_recipe(Recipe(name="r", model="deeppcb", align_reference=True))
    assert [r.name for r in reg.recipes()] == []


@pytest.mark.parametrize("doc", [{"floor": 0}, {"floor": 300}, {"floor": 10, "tolerance_px": 9},
                                 {"floor": 10, "extra": 1}])
def test_bad_gate_settings_are_refused(doc: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        UnchangedGate.model_validate(doc)


def test_calibrate_unchanged_command(tmp_path: Path) -> None:
    from lineside_inspect.cli import app

    ref = _reference().image
    rng = np.random.default_rng(4)
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"good-{i}.jpg"), rephotographed(ref, rng))
    res = CliRunner().invoke(app, ["calibrate-unchanged", str(STATION / "station1-reference.jpg"),
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "5 good frames" in res.output and "unchanged_gate:" in res.output
    floor = float(res.output.split("floor:")[1].split()[0])
    assert floor >= 12
    # the golden image kept in the frames' folder is not counted as a good part's frame
    (tmp_path / "golden.jpg").write_bytes((STATION / "station1-reference.jpg").read_bytes())
    res = CliRunner().invoke(app, ["calibrate-unchanged", str(tmp_path / "golden.jpg"),
                                   str(tmp_path)])
    assert res.exit_code == 0 and "5 good frames" in res.output, res.output
    (tmp_path / "golden.jpg").unlink()
    # a frame of another size is named, not a traceback
    cv2.imwrite(str(tmp_path / "small.png"), ref[:100, :100])
    res = CliRunner().invoke(app, ["calibrate-unchanged", str(STATION / "station1-reference.jpg"),
                                   str(tmp_path / "small.png")])
    assert res.exit_code != 0 and "reference image is" in res.output
    assert "Traceback" not in res.output
    # a defective frame among the good ones is named, not averaged into a useless floor
    res = CliRunner().invoke(app, ["calibrate-unchanged", str(STATION / "station1-reference.jpg"),
                                   str(tmp_path / "good-0.jpg"), str(STATION / "station1" / "part-0002.jpg")])
    assert res.exit_code != 0 and "good frame 2 differs from the reference" in res.output


def _commands() -> set[str]:
    import typer

    from lineside_inspect.cli import app

    def names(t: typer.Typer) -> set[str]:
        out = {c.name or c.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
               for c in t.registered_commands}
        return out | {g.name for g in t.registered_groups if g.name}

    return names(app)


def test_every_lineside_command_the_docs_name_exists() -> None:
    """The floor's description sent users to `lineside calibrate-gate`: no such command
    (it is calibrate-unchanged). Every `lineside X` in the docs, README and the package's
    own text (its field descriptions reach /docs) must name one."""
    import re

    commands = _commands()
    assert "calibrate-unchanged" in commands
    texts = [*(ROOT / "docs").rglob("*.md"), ROOT / "README.md",
             *(ROOT / "inspect" / "lineside_inspect").rglob("*.py")]
    wrong = [(str(p.relative_to(ROOT)), m.group(1)) for p in texts
             for m in re.finditer(r"`lineside ([a-z][a-z0-9-]*)", p.read_text())
             if m.group(1) not in commands]
    assert wrong == []
    floor = UnchangedGate.model_fields["floor"].description or ""
    assert "`lineside calibrate-unchanged`" in floor


def test_the_floor_says_when_its_minimum_was_used() -> None:
    """The CLI said the minimum applied whenever the rounded floor exceeded the rounded
    highest score x margin, which rounding made true in about 4 cases of 10."""
    from lineside_inspect.runtime.unchanged import calibrate_floor

    ref = np.full((64, 64, 3), 128, np.uint8)
    same = calibrate_floor([(ref.copy(), ref)], tile=32)
    assert same["minimum_applied"] and same["floor"] == 12.0
    marked = ref.copy()
    marked[8:24, 8:24] = 128 + 20  # a tile 20 grey levels off: 1.5 x its score is above 12
    off = calibrate_floor([(marked, ref)], tile=32)
    assert not off["minimum_applied"] and off["floor"] > 12


SAMPLE = ROOT / "datasets" / "deeppcb-sample"


def _shipped_gate() -> UnchangedGate:
    from lineside_inspect.recipes import load_recipe

    gate = load_recipe(ROOT / "configs" / "recipes" / "deeppcb-ref.yaml").unchanged_gate
    assert gate is not None
    return gate


def _single_defects() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each annotated defect of the sample alone: its box of the defective image pasted on
    the template (a whole board carries 3-12 defects, and one caught hides the others)."""
    import json

    doc = json.loads((SAMPLE / "annotations.json").read_text())
    images = {i["id"]: i for i in doc["images"]}
    cache: dict[str, np.ndarray] = {}

    def read(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = read_image(SAMPLE / "images" / name)
        return cache[name]

    for a in doc["annotations"]:
        im = images[a["image_id"]]
        if "reference" not in im:
            continue
        test, temp = read(im["file_name"]), read(im["reference"])
        x, y, w, h = (round(v) for v in a["bbox"])
        frame = temp.copy()
        frame[y:y + h, x:x + w] = test[y:y + h, x:x + w]
        yield f"{im['file_name']} {a['bbox']}", frame, temp


def test_no_single_defect_of_the_sample_passes_the_shipped_gate() -> None:
    """A one-way band of 3 px accepted any grey level between the reference's erosion and
    dilation: a thin trace that vanished (an open) or a bridge over a narrow gap (a short)
    gave no excess, and 5 of the sample's 250 single defects (284 of DeepPCB's 6,873)
    passed without the detector (review, session 33)."""
    gate = _shipped_gate()
    rng = np.random.default_rng(5)
    seen, escapes = 0, []
    for where, frame, temp in _single_defects():
        seen += 1
        for shown, f in (("as is", frame), ("re-photographed", rephotographed(frame, rng))):
            if check(f, temp, gate).unchanged:
                escapes.append(f"{where} {shown}")
    assert seen >= 200 and escapes == [], escapes
    # and the same templates re-photographed still skip the detector
    temp = next(_single_defects())[2]
    assert all(check(rephotographed(temp, rng), temp, gate).unchanged for _ in range(6))


def test_thin_traces_that_vanish_or_are_bridged_are_changes() -> None:
    ref = np.full((128, 128), 20, np.uint8)
    ref[40:42, 10:118] = 230  # a 2 px trace
    ref[80:83, 10:60] = 230  # two traces 3 px apart
    ref[86:89, 10:60] = 230
    gate = UnchangedGate(floor=16.5)
    assert check(ref.copy(), ref, gate).unchanged
    opened = ref.copy()
    opened[40:42, 50:56] = 20  # 6 px of the trace gone
    shorted = ref.copy()
    shorted[83:86, 30:33] = 230  # a 3x3 bridge
    for frame in (opened, shorted):
        assert not check(frame, ref, gate).unchanged


def test_a_calibration_with_a_defective_frame_among_good_ones_is_refused() -> None:
    """Eleven good frames and one with a spur gave a floor of 247.5, which let 16% of the
    sample's single defects pass (review, session 33)."""
    frame, temp = next((f, t) for _, f, t in _single_defects()
                       if 100 <= check(f, t, _shipped_gate()).score <= 200)
    rng = np.random.default_rng(6)
    good = [(rephotographed(temp, rng), temp) for _ in range(11)]
    assert calibrate_floor(good)["floor"] <= 20
    with pytest.raises(ConfigError, match=r"good frame 12 differs .* as a defect would"):
        calibrate_floor([*good, (frame, temp)])
    with pytest.raises(ConfigError, match="would pass real defects"):  # too few to compare
        calibrate_floor([(frame, temp)])
    with pytest.raises(ConfigError, match="margin"):
        calibrate_floor(good, margin=20)


def test_a_calibration_on_a_low_contrast_view_refuses_a_floor_that_passes_its_defects() -> None:
    """A grey station (40 levels between copper and substrate): one frame with a patch 27
    levels off among 15 good ones set a floor of 45, and the gate passed every patch of
    copper and substrate swapped (review, session 33)."""
    rng = np.random.default_rng(9)
    ref = np.full((256, 256), 100, np.uint8)
    for x in range(0, 256, 32):
        ref[:, x:x + 12] = 140  # copper stripes

    def photo(image: np.ndarray) -> np.ndarray:
        noisy = image.astype(np.float32) + rng.normal(0, 4, image.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    good = [(photo(ref), ref) for _ in range(15)]
    floor = calibrate_floor(good)["floor"]
    swapped = ref.copy()
    swapped[100:120, 40:60] = 240 - swapped[100:120, 40:60]  # copper and substrate swapped
    assert not check(photo(swapped), ref, UnchangedGate(floor=floor)).unchanged
    patched = ref.copy()
    patched[60:90, 60:90] = np.clip(patched[60:90, 60:90].astype(int) + 27, 0, 255)
    with pytest.raises(ConfigError, match=r"its contrast is 40|good frame 16 differs"):
        calibrate_floor([*good, (photo(patched), ref)])


def test_a_frame_of_another_view_fails_against_the_golden() -> None:
    """Another board (a PLC recipe switch keeps the camera's golden), an inverted frame:
    the detector trained on differences boxed nothing in frames that differ everywhere,
    and they passed (review, session 33)."""
    det = Detector(REF_MODEL, device="cpu", threads=1)
    reference = _reference()
    recipes = [Recipe(name="gated", model=det.card.name, unchanged_gate=_shipped_gate()),
               Recipe(name="plain", model=det.card.name),
               Recipe(name="aligned", model=det.card.name, align_reference=True,
                      unchanged_gate=_shipped_gate())]
    other = read_image(SAMPLE / "images" / "group50600" / "50600001_temp.jpg")
    rng = np.random.default_rng(8)
    for recipe in recipes:
        for frame in (other, 255 - reference.image):
            result = inspect(frame, det, recipe, reference=reference)
            assert result.verdict == "fail", recipe.name
            assert any(r.rule == "reference_mismatch" for r in result.reasons), result.reasons
        # the station's defective part fails for its defects, not as another view
        part = inspect(read_image(STATION / "station1" / "part-0002.jpg"), det, recipe,
                       reference=reference)
        assert part.verdict == "fail"
        assert {r.rule for r in part.reasons} <= {"critical", "max_count"}, part.reasons
        # a good part is no mismatch: re-photographed, and 8 px off where alignment is on
        good = [rephotographed(reference.image, rng)]
        if recipe.align_reference:
            good.append(_shift(rephotographed(reference.image, rng), 8, -6))
        for frame in good:
            result = inspect(frame, det, recipe, reference=reference)
            assert result.verdict == "pass", (recipe.name, result.reasons)


def test_a_defect_at_the_frames_edge_is_a_change() -> None:
    """The outer max_shift_px + tolerance_px (3) pixels were never compared: any defect
    there skipped the detector (450 of 450 specks; review, session 33). Only the side a
    part moved from is left out now, by as far as it moved."""
    ref = _reference().image
    gate = _shipped_gate()
    h, w = ref.shape[:2]
    for rows, cols in ((slice(100, 103), slice(0, 3)), (slice(0, 3), slice(200, 240)),
                       (slice(h - 3, h), slice(300, 303)), (slice(400, 403), slice(w - 3, w))):
        spoiled = ref.copy()
        spoiled[rows, cols] = 255 - spoiled[rows, cols]
        assert not check(spoiled, ref, gate).unchanged, (rows, cols)


def test_a_blank_golden_is_no_view_of_a_board() -> None:
    """A blank golden image (lens cap on, a lamp off or blown out: one grey level) flattened
    every frame to it (the frame's contrast was matched down by up to 64x), so no frame was
    another view, and the reference model passed the station's defective part and another
    board (review, session 36). A faint frame is still brought up to its golden's contrast."""
    from lineside_inspect.runtime.unchanged import view_mismatch

    det = Detector(REF_MODEL, device="cpu", threads=1)
    defective = read_image(STATION / "station1" / "part-0002.jpg")
    other = read_image(ROOT / "datasets" / "deeppcb-sample" / "images" / "group50600"
                       / "50600001_temp.jpg")
    for level in (0, 128, 255):
        blank = np.full_like(defective, level)
        assert view_mismatch(defective, blank) is not None, level
        ref = Reference.from_bytes("blank", cv2.imencode(".png", blank)[1].tobytes(), image=blank)
        result = inspect(defective, det, Recipe(name="plain", model=det.card.name),
                         reference=ref)
        assert result.verdict == "fail", level
        assert "reference_mismatch" in {r.rule for r in result.reasons}, result.reasons
    assert view_mismatch(other, np.full_like(other, 128)) is not None
    # the golden's own view, faint (half the contrast) or crisper, is no mismatch
    golden = _reference().image
    faint = cv2.convertScaleAbs(golden, alpha=0.5, beta=64)
    crisp = cv2.convertScaleAbs(golden, alpha=1.3, beta=-38)
    assert view_mismatch(faint, golden) is None and view_mismatch(crisp, golden) is None


def test_a_blank_frame_against_a_blank_golden_fails_as_blank() -> None:
    """A faint frame (lens cap, lamp off) against its golden matched it everywhere where
    the golden was blank or faint too: the reference model boxed nothing and the part
    passed as good (the leftover of sessions 36 and 37). Unset, a reference station fails
    a frame spanning under 16 grey levels where its golden spans more; a flat golden is
    the part's own look (DeepPCB's tiles all of one colour) and its flat frames pass, as
    good parts there are (failing them was a false reject on 57 of DeepPCB's 2,000 tiles).
    A recipe's own min_contrast checks both images."""
    det = Detector(REF_MODEL, device="cpu", threads=1)
    golden = _reference().image
    rng = np.random.default_rng(3)
    capped = np.clip(3 + rng.normal(0, 1.5, golden.shape), 0, 255).astype(np.uint8)
    dim = cv2.convertScaleAbs(golden, alpha=0.04, beta=2)  # the board, barely lit
    recipe = Recipe(name="ref", model=det.card.name, unchanged_gate={"floor": 16.5})
    strict = Recipe(name="strict", model=det.card.name, unchanged_gate={"floor": 16.5},
                    min_contrast=16)

    def ref_of(gold: np.ndarray) -> Reference:
        return Reference.from_bytes("g", cv2.imencode(".png", gold)[1].tobytes(), image=gold)

    flat = np.full_like(golden, 2)
    for name, frame, gold, rule, label in (
            ("capped", capped, golden, recipe, "frame"),
            ("dim", dim, golden, recipe, "frame"),
            ("capped, flat golden, set", capped, flat, strict, "frame"),
            ("dim golden, set", golden, dim, strict, "reference")):
        result = inspect(frame, det, rule, reference=ref_of(gold))
        rules = {r.rule: r for r in result.reasons}
        assert result.verdict == "fail" and "blank_frame" in rules, (name, result.reasons)
        assert "nearly blank" in rules["blank_frame"].message
        assert rules["blank_frame"].label == label, name
    # unset: a flat golden is the part's look, its flat good part no blank frame
    tile = np.full_like(golden, 255)
    said = inspect(tile, det, recipe, reference=ref_of(tile))
    assert "blank_frame" not in {r.rule for r in said.reasons}, said.reasons
    assert said.verdict == "pass", said.reasons
    # configurable: 0 turns it off (the barely lit board then passes as before)
    off = Recipe(name="off", model=det.card.name, min_contrast=0)
    assert "blank_frame" not in {r.rule for r in inspect(dim, det, off,
                                                          reference=_reference()).reasons}
    # the golden's own view at half its contrast is no blank frame, and the golden passes
    faint = cv2.convertScaleAbs(golden, alpha=0.5, beta=64)
    said = inspect(faint, det, recipe, reference=_reference())
    assert "blank_frame" not in {r.rule for r in said.reasons}, said.reasons
    assert inspect(golden, det, recipe, reference=_reference()).verdict == "pass"
    # a single-image model: off unless the recipe sets it
    single = Detector(SINGLE_MODEL, device="cpu", threads=1)
    assert inspect(capped, single, Recipe(name="s", model=single.card.name)).verdict == "pass"
    set_ = inspect(capped, single, Recipe(name="s", model=single.card.name, min_contrast=16))
    assert set_.verdict == "fail" and set_.reasons[-1].rule == "blank_frame"


def test_the_default_has_no_cliff_at_its_line() -> None:
    """Unset, a golden spanning just over 16 levels failed its good frames as blank_frame
    whenever sensor noise took them a level or two under 16 (review, session 39): a frame
    fails only if it also lost half its golden's contrast; a capped lens still fails."""
    from lineside_inspect.recipes.rules import Verdict, blank_view, with_blank_view
    from lineside_inspect.runtime.reference import contrast
    from lineside_inspect.runtime.types import Detections

    def ramp(levels: int) -> np.ndarray:  # a smooth part: a gentle gradient of ``levels``
        row = np.linspace(100, 100 + levels / 0.9, 64).round().astype(np.uint8)
        return np.repeat(np.tile(row, (64, 1))[:, :, None], 3, axis=2)

    golden, noisy, capped = ramp(18), ramp(14), np.full((64, 64, 3), 3, np.uint8)
    assert contrast(golden) >= 16 > contrast(noisy) and 2 * contrast(noisy) >= contrast(golden)
    ref = Reference.from_bytes("g", cv2.imencode(".png", golden)[1].tobytes(), image=golden)
    unset = Recipe(name="u", model="m")
    assert blank_view(unset, noisy, ref) is None  # a good frame a few levels under
    blank = blank_view(unset, capped, ref)
    assert blank is not None and blank.what == "frame" and blank.golden == contrast(golden)
    said = with_blank_view(Verdict("pass", Detections.empty([]), []), blank).reasons[-1]
    assert "under half of its golden's" in said.message and "sets no min_contrast" in said.message
    # a recipe's own figure is its own rule: the noisy frame fails under it
    strict = blank_view(Recipe(name="s", model="m", min_contrast=16), noisy, ref)
    assert strict is not None and strict.golden is None


def _every_4th(image: np.ndarray) -> int:
    """contrast() as it was: every 4th pixel of every 4th row, however large the frame."""
    sample = np.ascontiguousarray(image[::4, ::4])
    if sample.ndim == 3:
        sample = cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY)
    hist = np.bincount(sample.ravel(), minlength=256).cumsum()
    return int(np.searchsorted(hist, 0.95 * hist[-1]) - np.searchsorted(hist, 0.05 * hist[-1]))


def test_contrast_reads_a_bounded_grid_whatever_the_frame_size() -> None:
    """contrast() read every 4th pixel of every 4th row: 3 million of a 48 MP frame (~20 ms
    each time, for the frame and again for its golden; review, session 39). It reads at
    most CONTRAST_SAMPLES whatever the size or shape, and the same levels as before on
    frames up to 4 MP; on a larger one within a level of them."""
    from lineside_inspect.runtime.reference import CONTRAST_SAMPLES, contrast, contrast_sample

    golden = _reference().image
    board = read_image(STATION / "station1" / "part-0001.jpg")
    hd = cv2.resize(board, (1920, 1080))
    for image in (golden, board, hd, cv2.cvtColor(hd, cv2.COLOR_BGR2GRAY), golden[:7, :5]):
        assert contrast(image) == _every_4th(image), image.shape
    # a 48 MP frame and frames of one row or column, as views of a few bytes (no pixels
    # held): the grid stays under the bound
    ramp = np.broadcast_to(np.linspace(0, 255, 8000).astype(np.uint8)[None, :, None],
                           (6000, 8000, 3))
    for image in (ramp, np.broadcast_to(np.uint8(9), (1, 1 << 30)),
                  np.broadcast_to(np.uint8(9), (1 << 30, 1))):
        assert contrast_sample(image).size <= CONTRAST_SAMPLES, image.shape
    assert abs(contrast(ramp) - _every_4th(ramp)) <= 1


def test_a_goldens_contrast_is_worked_out_once_not_per_inspection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """blank_view measured the golden's contrast again for every frame judged against it;
    a named golden is the library's cached Reference, which keeps it (review, session 39)."""
    from lineside_inspect import references
    from lineside_inspect.recipes import rules
    from lineside_inspect.references import ReferenceLibrary

    (tmp_path / "station1.jpg").write_bytes((STATION / "station1-reference.jpg").read_bytes())
    library = ReferenceLibrary(tmp_path)
    golden_pixels: list[int] = []
    real = rules.contrast

    def counted(image: np.ndarray) -> int:
        if image is library.get("station1").image:
            golden_pixels.append(image.size)
        return real(image)

    # whichever module measures the golden, each time it does is counted
    monkeypatch.setattr(rules, "contrast", counted)
    monkeypatch.setattr(references, "contrast", counted, raising=False)
    frame = read_image(STATION / "station1" / "part-0001.jpg")
    recipe = Recipe(name="ref", model="deeppcb-ref")
    for _ in range(3):
        assert rules.blank_view(recipe, frame, library.get("station1")) is None
    assert len(golden_pixels) == 1
