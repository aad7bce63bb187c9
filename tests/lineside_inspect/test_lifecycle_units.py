"""The lifecycle's arithmetic and files on their own: the gate's counts and decision, box
matching, golden sets (content-addressed versions, tampering found), the rollout bounds
and the capture caps."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lineside_inspect.errors import GoldenSetError, NotFoundError
from lineside_inspect.lifecycle.capture import CapturePolicy
from lineside_inspect.lifecycle.config import CaptureSettings, RolloutSettings, bound_of
from lineside_inspect.lifecycle.gate import Found, decide, matched_boxes, replay, rules_of, score
from lineside_inspect.lifecycle.golden import (
    Candidate,
    GoldenBox,
    GoldenItem,
    GoldenLibrary,
    candidate,
    from_dataset,
    from_folder,
)
from lineside_inspect.lifecycle.rollout import Watch, judge_watch
from lineside_inspect.recipes import Recipe
from lineside_inspect.runtime.types import Detections

from .conftest import MODEL, SAMPLE

SHA = "0" * 64


def item(expected: str, boxes: list[tuple[str, tuple[float, float, float, float]]] | None,
         n: int = 0) -> GoldenItem:
    return GoldenItem(sha256=f"{n:064x}", ext="jpg", expected=expected,  # type: ignore[arg-type]
                      boxes=None if boxes is None else [GoldenBox(label=lb, box=b) for lb, b in boxes],
                      width=100, height=100)


def found(verdict: str, boxes: list[tuple[str, float, tuple[float, float, float, float]]] = (),  # type: ignore[assignment]
          ms: float = 10.0) -> Found:
    return Found(verdict, list(boxes), ms)  # type: ignore[arg-type]


def test_escapes_false_rejects_recall_precision_and_latency() -> None:
    a = ("open", (10.0, 10.0, 20.0, 20.0))
    b = ("short", (50.0, 50.0, 60.0, 60.0))
    items = [item("fail", [a, b], 1), item("fail", [a], 2), item("pass", [], 3),
             item("pass", [], 4), item("fail", None, 5)]
    results = [
        found("fail", [("open", 0.9, (11.0, 11.0, 20.0, 20.0)),     # matches a (IoU 0.81)
                       ("short", 0.8, (10.0, 10.0, 20.0, 20.0))]),  # right place, wrong class
        found("pass", [], 30.0),                                   # an escape
        found("fail", [("spur", 0.7, (0.0, 0.0, 5.0, 5.0))]),     # a false reject
        found("pass"),
        found("pass", [("open", 0.99, (0.0, 0.0, 9.0, 9.0))]),    # escape; boxes unknown: not scored
    ]
    s = score(items, results, model="m", version="2", sha256=SHA, precision="fp32")
    assert (s.images, s.expected_fail, s.expected_pass) == (5, 3, 2)
    assert (s.escapes, s.false_rejects) == (2, 1)
    # boxes only on the items whose boxes are known: 3 true, 3 found, 1 matched
    assert (s.boxes_true, s.boxes_found, s.boxes_matched) == (3, 3, 1)
    assert s.defect_recall == pytest.approx(1 / 3) and s.defect_precision == pytest.approx(1 / 3)
    assert s.latency_p50_ms == 10.0 and s.latency_p95_ms == pytest.approx(26.0)


def test_recall_and_precision_are_none_without_known_boxes() -> None:
    s = score([item("fail", None, 1)], [found("fail")], model="m", version="1", sha256=SHA,
              precision="int8")
    assert s.defect_recall is None and s.defect_precision is None and s.escapes == 0


def test_each_true_box_is_matched_once_best_score_first() -> None:
    truth = [("open", (0.0, 0.0, 10.0, 10.0))]
    two = [("open", 0.6, (0.0, 0.0, 10.0, 10.0)), ("open", 0.9, (0.0, 0.0, 10.0, 9.0))]
    assert matched_boxes(truth, two) == 1
    assert matched_boxes(truth, [("open", 0.9, (5.0, 5.0, 15.0, 15.0))]) == 0  # IoU 1/7
    assert matched_boxes(truth, [("short", 0.9, (0.0, 0.0, 10.0, 10.0))]) == 0


def _scored(escapes: int, false_rejects: int) -> Any:
    items = [item("fail", [], i) for i in range(5)] + [item("pass", [], 10 + i) for i in range(5)]
    res = ([found("pass")] * escapes + [found("fail")] * (5 - escapes)
           + [found("fail")] * false_rejects + [found("pass")] * (5 - false_rejects))
    return score(items, res, model="m", version="v", sha256=SHA, precision="fp32")


def test_the_gate_decision() -> None:
    active = _scored(escapes=1, false_rejects=1)
    assert decide(_scored(1, 1), active, 0) == []
    assert decide(_scored(0, 0), active, 0) == []
    more_escapes = decide(_scored(2, 0), active, 5)  # no allowance buys an escape
    assert len(more_escapes) == 1 and "2 escape(s)" in more_escapes[0]
    assert decide(_scored(1, 2), active, 0) and decide(_scored(1, 2), active, 1) == []
    assert len(decide(_scored(3, 4), active, 1)) == 2


def test_new_escapes_and_a_set_without_defects_fail_the_gate() -> None:
    """As many escapes as the active model, but on parts it catches, is a regression; a
    golden set of good parts alone compares no escapes and admits no one."""
    items = [item("fail", [], i) for i in range(3)] + [item("pass", [], 10)]
    active_found = [found("pass"), found("fail"), found("fail"), found("pass")]
    cand_found = [found("fail"), found("pass"), found("fail"), found("pass")]
    active = score(items, active_found, model="m", version="1", sha256=SHA, precision="fp32",
                   other=cand_found)
    cand = score(items, cand_found, model="m", version="2", sha256=SHA, precision="fp32",
                 other=active_found)
    assert (cand.escapes, cand.new_escapes, active.new_escapes) == (1, 1, 1)
    why = decide(cand, active, 0)
    assert len(why) == 1 and "1 defective part(s) that m 1 fails would pass" in why[0]
    good_only = [item("pass", [], i) for i in range(3)]
    none = score(good_only, [found("pass")] * 3, model="m", version="2", sha256=SHA,
                 precision="fp32")
    assert any("no defective part" in w for w in decide(none, none, 0))


def test_card_recipes_are_judged_at_each_cards_thresholds() -> None:
    card_recipe = Recipe(name="deeppcb-default", model="deeppcb", min_score={"open": 0.7},
                         max_count={"open": 1})
    rules = rules_of(card_recipe)
    assert rules.min_score == {} and rules.max_count == {"open": 1}
    line_recipe = Recipe(name="strict", model="deeppcb", default_min_score=0.3)
    assert rules_of(line_recipe) is line_recipe  # a line's own floors stay


# -- golden sets ------------------------------------------------------------------------
def test_golden_versions_are_content_addressed_and_share_files(tmp_path: Path) -> None:
    lib = GoldenLibrary(tmp_path / "golden")
    items, classes = from_dataset(SAMPLE, "val", limit=6)
    assert len(items) == 6 and {i.item.expected for i in items} == {"pass", "fail"}
    v1 = lib.create("line1", items, classes)
    with pytest.raises(GoldenSetError, match="exists"):
        lib.create("line1", items, classes)
    # the same content elsewhere has the same digest
    assert GoldenLibrary(tmp_path / "other").create("x", items, classes).digest == v1.digest
    goods = tmp_path / "goods"
    goods.mkdir()
    shutil.copy(SAMPLE / "images" / "group00041" / "00041000_temp.jpg", goods / "a.jpg")
    (goods / "notes.txt").write_text("not an image")
    good = from_folder(goods)
    assert len(good) == 1 and good[0].item.expected == "pass" and good[0].item.boxes == []
    new = good[0].item.sha256 not in {i.sha256 for i in v1.items}
    v2 = lib.add("line1", good)
    assert (v2.version, v2.parent, len(v2.items)) == (2, 1, 6 + new)
    assert (v2.digest != v1.digest) == new
    assert [m["version"] for m in lib.summaries()[0]["versions"]] == [1, 2]  # type: ignore[index]
    same = v1.items[0]
    f1 = tmp_path / "golden" / "line1" / "1" / same.file
    f2 = tmp_path / "golden" / "line1" / "2" / same.file
    assert f1.stat().st_ino == f2.stat().st_ino  # unchanged images are linked, not copied
    assert lib.get("line1").version == 2 and lib.get("line1", 1).digest == v1.digest
    with pytest.raises(NotFoundError):
        lib.get("line1", 9)
    with pytest.raises(GoldenSetError, match="must be"):
        lib.get("../etc")


def test_a_repeated_image_takes_its_new_expectation(tmp_path: Path) -> None:
    lib = GoldenLibrary(tmp_path)
    data = (SAMPLE / "images" / "group00041" / "00041000_temp.jpg").read_bytes()
    lib.create("s", [candidate(data, expected="pass", boxes=[], source="a")], ["open"])
    v2 = lib.add("s", [candidate(data, expected="fail",
                                 boxes=[GoldenBox(label="open", box=(1, 1, 5, 5))], source="b")])
    assert len(v2.items) == 1 and v2.items[0].expected == "fail" and v2.items[0].source == "b"


def test_tampering_is_found(tmp_path: Path) -> None:
    lib = GoldenLibrary(tmp_path)
    items, classes = from_dataset(SAMPLE, "val", limit=2)
    m = lib.create("s", items, classes)
    path = tmp_path / "s" / "1" / m.items[0].file
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(GoldenSetError, match="altered"):
        lib.read(m, m.items[0])
    manifest = tmp_path / "s" / "1" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["items"][0]["expected"] = "pass" if doc["items"][0]["expected"] == "fail" else "fail"
    manifest.write_text(json.dumps(doc))
    with pytest.raises(GoldenSetError, match="digest"):
        lib.get("s")
    # one broken set hid every other from the list (GET /v1/golden and golden list failed)
    lib.create("t", items, classes)
    (tmp_path / "u" / "1").mkdir(parents=True)
    (tmp_path / "u" / "1" / "manifest.json").write_bytes(b"\xff not json")
    listed = {e["name"]: e for e in lib.summaries()}
    assert [v["version"] for v in listed["t"]["versions"]] == [1]  # type: ignore[index]
    assert listed["s"]["versions"] == [] and "digest" in listed["s"]["broken"][0]["error"]  # type: ignore[index]
    assert "manifest invalid" in listed["u"]["broken"][0]["error"]  # type: ignore[index]
    assert str(tmp_path) not in json.dumps(listed)  # no path in what an answer carries


def test_a_manifest_moved_under_another_name_is_refused(tmp_path: Path) -> None:
    """Images are found by the manifest's own name and version: one copied under another
    set's folder would read that set's files."""
    lib = GoldenLibrary(tmp_path)
    items, classes = from_dataset(SAMPLE, "val", limit=2)
    lib.create("s", items, classes)
    shutil.copytree(tmp_path / "s", tmp_path / "t")
    with pytest.raises(GoldenSetError, match=r"golden set t:1: its manifest names s:1"):
        lib.get("t")


def test_golden_add_needs_an_existing_set(tmp_path: Path) -> None:
    """A typo or a missing --data-dir must not start a new set at version 1."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    result = CliRunner().invoke(app, ["golden", "add", "line1", "--good", str(SAMPLE / "images"),
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no golden set 'line1'" in result.output
    assert "golden create" in result.output and not (tmp_path / "golden" / "line1").exists()


def test_golden_folders_take_a_reference_image(tmp_path: Path) -> None:
    """docs/lifecycle.md: a folder's items keep a reference given with --reference, so a
    reference station's good parts can gate a reference model; alone it names what it needs."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    goods = tmp_path / "goods"
    goods.mkdir()
    group = SAMPLE / "images" / "group13000"
    shutil.copy(group / "13000001_temp.jpg", goods / "a.jpg")
    golden = group / "13000001_temp.jpg"
    cli, data_dir = CliRunner(), ["--data-dir", str(tmp_path)]
    r = cli.invoke(app, ["golden", "create", "s", "--good", str(goods), "--reference", str(golden),
                         *data_dir])
    assert r.exit_code == 0, r.output
    (item,) = GoldenLibrary(tmp_path / "golden").get("s").items
    assert item.reference == hashlib.sha256(golden.read_bytes()).hexdigest()
    r = cli.invoke(app, ["golden", "add", "s", "--data", str(SAMPLE), "--reference", str(golden),
                         *data_dir])
    assert r.exit_code == 2 and "give one of them with it" in r.output
    r = cli.invoke(app, ["golden", "add", "s", "--good", str(goods), "--reference",
                         str(tmp_path / "nope.jpg"), *data_dir])
    assert r.exit_code == 2 and "nope.jpg: not a file" in r.output
    assert [v["version"] for v in GoldenLibrary(tmp_path / "golden").summaries()[0]["versions"]] == [1]  # type: ignore[index]


def test_a_repeated_image_without_a_reference_keeps_the_one_it_had(tmp_path: Path) -> None:
    """Session 47 QA walk: an image given again without a reference replaced its entry
    whole and lost its reference (a reference model's gate on the set then failed, "has no
    reference image"). Given again alike it keeps it, and the digest (gate passes count);
    its verdict and boxes still take what is given; a reference given replaces it; a
    duplicate in one call without one keeps the earlier's."""
    lib = GoldenLibrary(tmp_path)
    group = SAMPLE / "images" / "group13000"
    data, ref, other = ((group / f).read_bytes() for f in
                        ("13000001_test.jpg", "13000001_temp.jpg", "13000002_temp.jpg"))
    sha_ref, sha_other = (hashlib.sha256(b).hexdigest() for b in (ref, other))
    v1 = lib.create("s", [candidate(data, expected="pass", boxes=[], source="a", reference=ref)],
                    ["open"])
    v2 = lib.add("s", [candidate(data, expected="pass", boxes=[], source="again")])
    assert v2.digest == v1.digest and v2.items[0].reference == sha_ref
    assert lib.read(v2, v2.items[0], reference=True) == ref  # its file came along
    bad = [GoldenBox(label="open", box=(1, 1, 5, 5))]
    v3 = lib.add("s", [candidate(data, expected="fail", boxes=bad, source="b")])
    assert (v3.items[0].expected, v3.items[0].boxes, v3.items[0].reference) == ("fail", bad, sha_ref)
    v4 = lib.add("s", [candidate(data, expected="fail", boxes=bad, source="c", reference=other),
                       candidate(data, expected="fail", boxes=bad, source="d")])
    assert v4.items[0].reference == sha_other and v4.items[0].source == "d"
    assert lib.read(v4, v4.items[0], reference=True) == other


def test_golden_add_says_what_changed_and_what_it_does_to_gate_passes(tmp_path: Path) -> None:
    """Session 47 walk: `golden add` of parts already in the set printed only the new
    version's counts, and nothing said that the new version stales the server's gate
    passes (or, with the same content, keeps them). Re-adding a station's good parts
    without --reference dropped the reference a reference model's gate needs: it is kept
    now (QA walk), and said so."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    goods, more = tmp_path / "goods", tmp_path / "more"
    goods.mkdir()
    more.mkdir()
    group = SAMPLE / "images" / "group13000"
    shutil.copy(group / "13000001_temp.jpg", goods / "a.jpg")
    shutil.copy(group / "13000002_temp.jpg", more / "b.jpg")
    cli, data_dir = CliRunner(), ["--data-dir", str(tmp_path)]
    r = cli.invoke(app, ["golden", "create", "s", "--good", str(goods), "--reference",
                         str(goods / "a.jpg"), *data_dir])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["golden", "create", "s", "--good", str(goods), *data_dir])
    assert r.exit_code == 2 and "lineside golden add s" in r.output, r.output
    r = cli.invoke(app, ["golden", "add", "s", "--good", str(goods), *data_dir])  # no --reference
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "from s:1: 0 new image(s), 0 already in it taken as given now" in said, said
    assert "1 given again unchanged" in said and "no longer admits" not in said, said
    assert ("1 already in it, given without a reference, kept the reference image each had "
            "(folder a.jpg): give --reference GOLDEN to replace it") in said, said
    assert "s:2 holds what s:1 held (the same digest): a server's gate passes on s:1 still count" in said
    (item,) = GoldenLibrary(tmp_path / "golden").get("s").items
    assert item.reference == item.sha256
    r = cli.invoke(app, ["golden", "add", "s", "--good", str(goods), "--reference",
                         str(more / "b.jpg"), *data_dir])  # another reference replaces it
    said = " ".join(r.output.split())
    assert "from s:2: 0 new image(s), 1 already in it taken as given now" in said, said
    assert "kept the reference" not in said, said
    assert ("a server's gate pass judged on s:2 no longer admits a version "
            "(lifecycle.gate.require_gate): gate it again on s:3") in said, said
    assert '"golden": "s", "recipe": "*"' in said, said
    r = cli.invoke(app, ["golden", "add", "s", "--good", str(more), *data_dir])
    said = " ".join(r.output.split())
    assert "from s:3: 1 new image(s), 0 already in it" in said and "kept the" not in said
    assert "gate pass judged on s:3 no longer admits" in said, said
    r = cli.invoke(app, ["golden", "add", "--help"])
    assert "else it keeps the one it had" in " ".join(r.output.split()), r.output


def test_golden_reference_that_is_no_image_is_named(tmp_path: Path) -> None:
    """Session 44 review: a --reference that is no image was blamed on the folder's first
    part ("folder a.jpg: its reference image: ..."), not named; nothing is made."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    goods = tmp_path / "goods"
    goods.mkdir()
    shutil.copy(SAMPLE / "images" / "group13000" / "13000001_temp.jpg", goods / "a.jpg")
    (tmp_path / "golden.jpg").write_text("not an image")
    r = CliRunner().invoke(app, ["golden", "create", "s", "--good", str(goods), "--reference",
                                 str(tmp_path / "golden.jpg"), "--data-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "reference golden.jpg: not a JPEG, PNG or BMP image" in r.output, r.output
    assert "a.jpg" not in r.output and not (tmp_path / "golden" / "s").exists()


@pytest.mark.parametrize("sha", ["../../../etc/passwd", "a" * 64 + "\n", "A" * 64])
def test_a_manifest_cannot_name_files_outside_its_folder(tmp_path: Path, sha: str) -> None:
    lib = GoldenLibrary(tmp_path)
    items, classes = from_dataset(SAMPLE, "val", limit=1)
    lib.create("s", items, classes)
    manifest = tmp_path / "s" / "1" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["items"][0]["sha256"] = sha
    manifest.write_text(json.dumps(doc))
    with pytest.raises(GoldenSetError, match="sha256"):
        lib.get("s")


def test_not_an_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GoldenSetError, match=r"x\.jpg"):
        candidate(b"GIF89a....", expected="pass", boxes=[], source="folder x.jpg")


def test_a_truncated_image_is_refused_when_added_and_named_when_an_older_set_holds_one(
        tmp_path: Path) -> None:
    good = (SAMPLE / "images" / "group13000" / "13000000_temp.jpg").read_bytes()
    cut = good[: len(good) // 2]  # its header is whole: only a full decode finds it
    with pytest.raises(GoldenSetError, match=r"folder cut\.jpg: truncated JPEG"):
        candidate(cut, expected="pass", boxes=[], source="folder cut.jpg")
    with pytest.raises(GoldenSetError, match=r"folder ok\.jpg: its reference image: truncated"):
        candidate(good, expected="pass", boxes=[], source="folder ok.jpg", reference=cut)
    # a set written before items were decoded in full: the gate names the item, not a 500
    ok = candidate(good, expected="pass", boxes=[], source="folder ok.jpg")
    old = Candidate(ok.item.model_copy(update={"sha256": hashlib.sha256(cut).hexdigest(),
                                               "source": "folder cut.jpg"}), cut)
    lib = GoldenLibrary(tmp_path / "golden")
    manifest = lib.create("s", [old], ["open"])
    detector = SimpleNamespace(needs_reference=False)
    with pytest.raises(GoldenSetError, match=r"golden set s:1: folder cut\.jpg: truncated JPEG"):
        replay([detector], lib, manifest, Recipe(name="r", model="m"))  # type: ignore[list-item]


def test_a_good_image_without_a_reference_is_its_own_in_a_set_of_pairs(tmp_path: Path) -> None:
    """DeepPCB's templates (good, no reference of their own) made golden items a reference
    model could not be gated on ("has no reference image"); training and evaluation take
    such an image as its own reference (nothing changed), and so does a golden set now."""
    from lineside_inspect.runtime.detector import Detector

    items, classes = from_dataset(SAMPLE, "val", limit=6)
    good = [c.item for c in items if c.item.expected == "pass"]
    bad = [c.item for c in items if c.item.expected == "fail"]
    assert good and bad and all(i.reference == i.sha256 for i in good)
    assert all(i.reference not in (None, i.sha256) for i in bad)  # their templates
    lib = GoldenLibrary(tmp_path / "golden")
    manifest = lib.create("pairs", items, classes)
    ref_model = Detector(SAMPLE.parents[1] / "models" / "deeppcb-ref" / "1", device="cpu", threads=1)
    (found,) = replay([ref_model], lib, manifest, Recipe(name="r", model="deeppcb-ref"))
    verdicts = {i.expected: [] for i in manifest.items}  # type: ignore[var-annotated]
    for i, f in zip(manifest.items, found, strict=True):
        verdicts[i.expected].append(f.verdict)
    assert set(verdicts["pass"]) == {"pass"}  # a template judged against itself passes


# -- rollout bounds -----------------------------------------------------------------------
def _watch(n: int, fails: int, base_n: int = 100, base_fails: int = 10, fr: int = 0) -> Watch:
    w = Watch("m", "2", "1", "r", datetime.now(UTC), "admin", None, base_n, base_fails)
    w.inspections, w.fails, w.false_rejects = n, fails, fr
    return w


def test_rollout_bounds() -> None:
    b = RolloutSettings(min_inspections=20, watch_inspections=100, max_fail_rate_ratio=1.5,
                        max_fail_rate_increase=0.05, max_false_rejects=2)
    assert judge_watch(_watch(19, 19), b)[0] == "watching"  # too few to judge the rate
    assert judge_watch(_watch(20, 3), b)[0] == "watching"  # 15% = the bound max(15%, 15%)
    state, why = judge_watch(_watch(20, 4), b)  # 20% > 15%
    assert state == "rolled_back" and "20.0%" in why and "15.0%" in why
    assert judge_watch(_watch(5, 0, fr=3), b)[0] == "rolled_back"  # false rejects: at once
    assert judge_watch(_watch(100, 10), b)[0] == "watching"  # enough parts, not enough time
    later = datetime.now(UTC) + timedelta(seconds=b.min_watch_s + 60)
    assert judge_watch(_watch(100, 10), b, later)[0] == "complete"
    assert judge_watch(_watch(99, 9), b, later)[0] == "watching"
    # a near-zero baseline is not multiplied into a hair trigger: +5 points allowed
    assert judge_watch(_watch(20, 1, base_fails=0), b)[0] == "watching"
    state, why = judge_watch(_watch(100, 90, base_n=0, base_fails=0), b, later)
    assert state == "complete" and "not compared" in why  # no baseline: said so



def test_a_rollout_after_a_version_that_failed_most_parts_still_rolls_back() -> None:
    """``max(previous x 1.5, previous + 5 points)`` reached 100% at a previous fail rate of
    two thirds (the demo camera's sample boards): a version failing every part was never
    rolled back on its fail rate (session 52). The pass rate's side judges it now; the
    low rates keep their bound, and the absolute margin stays."""
    b = RolloutSettings(min_inspections=50, watch_inspections=500)  # x1.5, +5 points
    later = datetime.now(UTC) + timedelta(seconds=b.min_watch_s + 60)
    # previous 67%: bound 1 - 33% / 1.5 = 78% (it was 100.5%)
    assert bound_of(0.67, b) == pytest.approx(0.78)
    state, why = judge_watch(_watch(50, 50, base_n=300, base_fails=201), b)
    assert state == "rolled_back" and "100.0%" in why and "78.0%" in why, why
    assert judge_watch(_watch(50, 39, base_n=300, base_fails=201), b)[0] == "watching"  # 78%
    assert judge_watch(_watch(50, 40, base_n=300, base_fails=201), b)[0] == "rolled_back"
    # previous 80%: a pass rate of 20% -> under 13.3% rolls back (fail rate over 86.7%)
    assert judge_watch(_watch(50, 43, base_n=500, base_fails=400), b)[0] == "watching"
    assert judge_watch(_watch(50, 44, base_n=500, base_fails=400), b)[0] == "rolled_back"
    # previous 90%: 1 - 10% / 1.5 = 93.3% is under +5 points, which holds: 95%
    assert bound_of(0.9, b) == pytest.approx(0.95)
    # the usual low rates: the bound is what it was (2% -> 7%, 10% -> 15%, 30% -> 45%)
    for prev, bound in ((0.0, 0.05), (0.02, 0.07), (0.1, 0.15), (0.3, 0.45), (0.4, 0.6)):
        assert bound_of(prev, b) == pytest.approx(bound)
    # the margin holds on both sides: a ratio of 1 is the margin alone, not a hair trigger
    one = RolloutSettings(max_fail_rate_ratio=1, max_fail_rate_increase=0.05)
    assert [bound_of(p, one) for p in (0.02, 0.67)] == pytest.approx([0.07, 0.72])
    # at 95% or more even a version failing every part is within +5 points: said at the end
    state, why = judge_watch(_watch(500, 500, base_n=500, base_fails=480), b, later)
    assert state == "complete" and "failed 96.0%" in why and "could not roll it back" in why
    state, why = judge_watch(_watch(500, 50, base_n=500, base_fails=50), b, later)
    assert state == "complete" and "could not" not in why


# -- capture --------------------------------------------------------------------------------
def _inspection(scores: list[float], labels: list[int], counted: list[int]) -> Any:
    names = ["open", "short", "spur"]
    raw = Detections(np.array([[0, 0, 10, 10]] * len(scores)), np.array(scores), np.array(labels), names)
    card = SimpleNamespace(thresholds={"open": 0.7})
    return SimpleNamespace(detections=raw, defects=raw[np.array(counted, dtype=int)],
                           recipe=Recipe(name="r", model="m"), detector=SimpleNamespace(card=card),
                           anomaly=None)


def test_capture_reasons_and_hourly_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    # the places are per clock hour: its clock is held mid-hour (a run at hh:59:59 got two
    # more places once the hour turned)
    from lineside_inspect.lifecycle import capture

    monkeypatch.setattr(capture, "time", SimpleNamespace(time=lambda: 1_800_000_000.0 + 1800))
    policy = CapturePolicy(CaptureSettings(per_hour=2, near_threshold=0.05, random_rate=0.0,
                                           rare_share=0.1), seed=0)
    near = _inspection([0.68], [0], [])  # open at 0.68, its threshold 0.7: a pass that almost failed
    far = _inspection([0.2], [0], [])
    assert policy(near) == "near_threshold" and policy(far) is None
    assert policy(near) == "near_threshold"
    assert policy(near) is None  # this hour's two places are taken
    for _ in range(30):  # 30 counted open defects, far from the threshold
        policy(_inspection([0.95], [0], [0]))
    assert policy(_inspection([0.99], [2], [0])) == "rare_class"  # one spur among 30 opens
    assert policy.allow("shadow_disagreement") and policy.allow("shadow_disagreement")
    assert not policy.allow("shadow_disagreement")
    assert policy.used()["near_threshold"] == 2


def test_golden_cli_defaults_to_the_servers_data_folder(tmp_path: Path, monkeypatch) -> None:
    """Without --data-dir, golden sets go where the server keeps its store by default."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    monkeypatch.delenv("LINESIDE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["golden", "list"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "lineside" / "store" / "golden") in result.output.replace("\n", "")


# -- the fail-rate alarm --------------------------------------------------------------------
def _judged(recipe: Recipe, version: str, verdict: str, fused: str | None = None) -> Any:
    """What the alarm reads of an inspection: its recipe, model card, verdict, fused model."""
    card = SimpleNamespace(name="m", version=version)
    return SimpleNamespace(recipe=recipe, detector=SimpleNamespace(card=card), verdict=verdict,
                           fused_with=fused)


def test_the_fail_rate_bound_and_its_hysteresis() -> None:
    from lineside_inspect.lifecycle.alarm import bound_of, judge_rate
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    s = FailRateAlarmSettings()  # x2, +5 points
    assert bound_of(0.0, s) == pytest.approx(0.05) and bound_of(0.2, s) == pytest.approx(0.4)
    assert not judge_rate(0.02, 0.07, False, s) and judge_rate(0.02, 0.0701, False, s)
    # raised at 7%: stays until halfway back (4.5%)
    assert judge_rate(0.02, 0.05, True, s) and not judge_rate(0.02, 0.045, True, s)


def test_the_fail_rate_alarm_is_raised_on_a_line_that_usually_fails_half_its_parts() -> None:
    """``max(usual x 2, usual + 5 points)`` reached 100% at a usual rate of one half: such a
    line never raised an alarm, even failing every part (session 52). The pass rate
    halving raises it now; below a usual third the bound is what it was."""
    from lineside_inspect.lifecycle.alarm import FailRateAlarm, bound_of, judge_rate
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    s = FailRateAlarmSettings()  # x2, +5 points
    assert bound_of(0.6, s) == pytest.approx(0.8)  # 1 - 40% / 2 (it was 120%)
    assert judge_rate(0.6, 0.81, False, s) and not judge_rate(0.6, 0.8, False, s)
    assert judge_rate(0.6, 0.71, True, s) and not judge_rate(0.6, 0.7, True, s)  # clears at 70%
    for usual, bound in ((0.01, 0.06), (0.02, 0.07), (0.05, 0.1), (0.2, 0.4), (1 / 3, 2 / 3)):
        assert bound_of(usual, s) == pytest.approx(bound)
    assert bound_of(0.95, s) == pytest.approx(1.0)  # the margin: 95% and over stay blind

    # through the alarm itself: 2 fails of 3 learned as usual (bound 5/6), then every part fails
    changes: list[str] = []
    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=6, window=6),
                          on_change=lambda c: changes.append(c.state))
    r = Recipe(name="r", model="m")
    for verdict in ["fail", "fail", "pass"] * 2 + ["fail"] * 6:
        alarm.offer(_judged(r, "1", verdict))
    (track,) = alarm.status()
    assert track["usual_fail_rate"] == pytest.approx(2 / 3) and track["recent_fail_rate"] == 1
    assert track["bound"] == pytest.approx(5 / 6) and track["state"] == "alarm"
    assert changes == ["alarm"]


def test_the_fail_rate_alarm_learns_afresh_per_model_version_and_recipe_content() -> None:
    from lineside_inspect.errors import Busy
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings
    from lineside_inspect.server.metrics import Metrics

    changes: list[tuple[str, str]] = []
    metrics = Metrics()
    r1 = Recipe(name="r", model="m")
    # what judges recipe "r" now, as the server's registry would say
    judging: dict[str, tuple[Recipe, str]] = {"r": (r1, "m 1")}
    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=4, window=2),
                          metrics=metrics, on_change=lambda c: changes.append((c.version, c.state)),
                          judging_now=judging.get)
    for verdict in ("pass", "fail", "pass", "pass"):  # usual 25%: bound 50%
        alarm.offer(_judged(r1, "1", verdict))
    (t,) = alarm.status()
    # judged at once: the baseline's last inspections fill the window
    assert (t["state"], t["usual_fail_rate"], t["bound"]) == ("ok", 0.25, 0.5)
    assert t["recent_inspections"] == 2 and t["recent_fail_rate"] == 0
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.status()[0]["state"] == "ok"  # 50%: not above the bound
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.status()[0]["state"] == "alarm" and changes == [("1", "alarm")]
    assert metrics.registry.get_sample_value("lineside_fail_rate_alarm", {"recipe": "r"}) == 1

    # version 2 activated: the alarm of 1 ends, 2 learns afresh
    judging["r"] = (r1, "m 2")
    alarm.offer(_judged(r1, "2", "fail"))
    (t,) = alarm.status()
    assert (t["judged_by"], t["state"], t["baseline_inspections"]) == ("m 2", "learning", 1)
    assert changes[-1] == ("1", "cleared")
    assert metrics.registry.get_sample_value("lineside_fail_rate_alarm", {"recipe": "r"}) == 0
    # inspections pinned to 1 that finish after the swap count for 1, silently
    alarm.offer(_judged(r1, "1", "pass"))
    assert alarm.status()[0]["judged_by"] == "m 2" and len(changes) == 2
    # 1 back (a rollback), at once: its counts resume, its alarm is raised again, then clears
    judging["r"] = (r1, "m 1")
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.status()[0]["state"] == "alarm" and changes[-1] == ("1", "alarm")
    alarm.offer(_judged(r1, "2", "fail"))  # a late one of 2 switches nothing back
    assert alarm.status()[0]["judged_by"] == "m 1" and len(changes) == 3
    alarm.offer(_judged(r1, "1", "pass"))
    alarm.offer(_judged(r1, "1", "pass"))
    assert alarm.status()[0]["state"] == "ok" and changes[-1] == ("1", "cleared")
    assert len(changes) == 4
    # a fused good-only model is part of what judges; so is the recipe's content
    judging["r"] = (r1, "m 1 + g 3")
    alarm.offer(_judged(r1, "1", "pass", fused="g 3"))
    assert alarm.status()[0]["judged_by"] == "m 1 + g 3"
    strict = Recipe(name="r", model="m", min_score={"x": 0.9})
    judging["r"] = (strict, "m 1")
    alarm.offer(_judged(strict, "1", "pass"))
    assert alarm.status()[0]["baseline_inspections"] == 1
    judging["r"] = (Recipe(name="r", model="m"), "m 1")  # put again, same content as r1
    alarm.offer(_judged(judging["r"][0], "1", "pass"))
    assert alarm.status()[0]["state"] == "ok"
    # relearning forgets (of the track named, else 409); it ends an alarm, said so
    old = alarm.track("r")
    alarm.offer(_judged(r1, "1", "fail"))
    alarm.offer(_judged(r1, "1", "fail"))
    judging["r"] = (strict, "m 1")
    alarm.offer(_judged(strict, "1", "pass"))  # the recipe was put again meanwhile
    with pytest.raises(Busy, match="judged by m 1 now"):
        alarm.relearn("r", of=old)
    judging["r"] = (r1, "m 1")
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.relearn("r", of=old, actor="ann").state == "alarm"
    assert changes[-1] == ("1", "cleared")
    assert alarm.status()[0]["baseline_inspections"] == 0
    with pytest.raises(NotFoundError, match=r"recipes with counts: r\)"):
        alarm.relearn("q")
    # a recipe in alarm that is dropped: its alarm ends, said so, and its series go;
    # an inspection of it still running is not counted
    for verdict in ("pass", "pass", "pass", "pass", "fail", "fail"):
        alarm.offer(_judged(r1, "1", verdict))
    assert alarm.status()[0]["state"] == "alarm"
    del judging["r"]
    alarm.forget("r")
    assert alarm.status() == [] and changes[-1] == ("1", "cleared")
    assert metrics.registry.get_sample_value("lineside_fail_rate_alarm", {"recipe": "r"}) is None
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.status() == []
    judging["r"] = (r1, "m 1")  # a recipe of that name again: watched afresh, at once
    alarm.offer(_judged(r1, "1", "fail"))
    assert alarm.status()[0]["baseline_inspections"] == 1


def test_the_fail_rate_alarm_keeps_a_few_tracks_per_recipe_and_any_number_of_recipes() -> None:
    """Many recipes in turn all learn (no shared cap evicts them); a recipe's own tracks are
    capped, so versions coming and going do not grow it."""
    from lineside_inspect.lifecycle.alarm import TRACKS_PER_RECIPE, FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=3, window=3))
    recipes = [Recipe(name=f"r{i}", model="m") for i in range(100)]
    for _ in range(3):
        for r in recipes:
            alarm.offer(_judged(r, "1", "pass"))
    assert [t["state"] for t in alarm.status()] == ["ok"] * 100
    for v in range(20):
        alarm.offer(_judged(recipes[0], str(v), "pass"))
    assert len(alarm._recipes["r0"].tracks) == TRACKS_PER_RECIPE
    # kept by last use: A B C D, A again, then E: B goes, A keeps its counts
    for v in ("A", "B", "C", "D", "A", "E"):
        alarm.offer(_judged(recipes[1], v, "pass"))
    assert {j for _, j in alarm._recipes["r1"].tracks} == {"m A", "m C", "m D", "m E"}


def test_the_fail_rate_alarm_tells_changes_in_order_from_many_threads() -> None:
    """Worker threads inspect at once: every change is told once, in the order it
    happened, as it was (raised and cleared alternate)."""
    import itertools
    import threading

    from lineside_inspect.lifecycle.alarm import Change, FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    told: list[Change] = []
    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=2, window=2),
                          on_change=told.append)
    r = Recipe(name="r", model="m")
    alarm.offer(_judged(r, "1", "pass"))
    alarm.offer(_judged(r, "1", "pass"))
    seq = [_judged(r, "1", v) for v in ("fail", "fail", "pass", "pass") * 500]

    def run(part: list[Any]) -> None:
        for i in part:
            alarm.offer(i)

    threads = [threading.Thread(target=run, args=(seq[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    states = [c.state for c in told]
    assert states and all(a != b for a, b in itertools.pairwise(states))
    assert states[0] == "alarm"
    assert all(("above the bound" in c.why) == (c.state == "alarm") for c in told)
    final = alarm.status()[0]["state"]
    assert final == ("alarm" if states[-1] == "alarm" else "ok")


def test_a_late_inspection_of_the_models_still_shown_is_told() -> None:
    """Version 2 activated, none of its inspections done yet: a late one of 1 that raises
    1's alarm is told (1 is what status shows), so the clear that follows has its raise."""
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    told: list[tuple[str, str]] = []
    r1 = Recipe(name="r", model="m")
    judging = {"r": (r1, "m 1")}
    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=2, window=2),
                          on_change=lambda c: told.append((c.version, c.state)),
                          judging_now=judging.get)
    for verdict in ("pass", "pass", "fail"):
        alarm.offer(_judged(r1, "1", verdict))
    judging["r"] = (r1, "m 2")
    alarm.offer(_judged(r1, "1", "fail"))  # late, and still the one shown
    assert alarm.status()[0]["state"] == "alarm" and told == [("1", "alarm")]
    alarm.offer(_judged(r1, "2", "pass"))
    assert told == [("1", "alarm"), ("1", "cleared")]
    assert alarm.status()[0]["judged_by"] == "m 2"


def test_the_fail_rate_alarm_resumes_its_counts_after_a_restart(tmp_path: Path) -> None:
    """Saved to a file and loaded by the next server: the same models go on counting (an
    alarm stands, said again); other models learn afresh and end the old alarm, said so."""
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.alarm_file import AlarmFile
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings
    from lineside_inspect.server.metrics import Metrics

    s = FailRateAlarmSettings(baseline_inspections=4, window=4, max_fail_rate_increase=0.3)
    r1, r2 = Recipe(name="r", model="m"), Recipe(name="q", model="m")
    path = tmp_path / "lifecycle" / "fail_rate_alarm.json"

    def server(judging: dict[str, tuple[Recipe, str]]) -> tuple[FailRateAlarm, AlarmFile,
                                                               list[tuple[str, str, str]]]:
        told: list[tuple[str, str, str]] = []
        alarm = FailRateAlarm(s, metrics=Metrics(), judging_now=judging.get,
                              on_change=lambda c: told.append((c.recipe, c.version, c.state)))
        saved = AlarmFile(alarm, path, every_s=3600)
        saved.load()
        return alarm, saved, told

    alarm, saved, told = server({"r": (r1, "m 1"), "q": (r2, "m 1")})
    saved.save()
    assert not path.exists()  # nothing counted: nothing written
    for verdict in ("pass", "pass", "pass", "pass", "fail", "fail"):
        alarm.offer(_judged(r1, "1", verdict))
    alarm.offer(_judged(r2, "1", "pass"))
    assert told == [("r", "1", "alarm")]
    saved.close()
    before = {t["recipe"]: t for t in alarm.status()}

    # the same models after the restart: nothing is shown until the recipe's first inspection
    # (a PLC trigger before the server is ready) or resume() (the server ready) settles it
    alarm, saved, told = server({"r": (r1, "m 1"), "q": (r2, "m 2")})
    assert alarm.status() == [] and alarm.recipes_in_alarm() == frozenset()
    with pytest.raises(NotFoundError, match="recipes with counts: q, r"):
        alarm.relearn("nope")
    alarm.offer(_judged(r1, "1", "fail"))
    (t,) = alarm.status()
    assert told == [("r", "1", "alarm")] and alarm.recipes_in_alarm() == {"r"}
    assert (t["state"], t["baseline_inspections"], t["usual_fail_rate"]) == ("alarm", 4, 0.0)
    assert t["recent_fail_rate"] == 0.75 and t["since"] == before["r"]["since"]
    assert alarm.metrics is not None and alarm.metrics.registry.get_sample_value(
        "lineside_fail_rate_alarm", {"recipe": "r"}) == 1
    # before ready an inspection of other models settles nothing (q is judged by version
    # 2 now, maybe only until a fleet box restores its own): not counted
    alarm.offer(_judged(r2, "2", "pass"))
    assert [t["recipe"] for t in alarm.status()] == ["r"]
    alarm.resume()  # ready: q is learned afresh (it was not in alarm: no word)
    alarm.offer(_judged(r2, "2", "pass"))
    assert alarm.track("q").judged_by == "m 2" and alarm.track("q").state == "learning"
    assert len(told) == 1
    saved.close()

    # version 2 of r after the next restart: r's alarm with 1 ends, said so
    alarm, saved, told = server({"r": (r1, "m 2"), "q": (r2, "m 2")})
    alarm.resume()
    alarm.offer(_judged(r1, "2", "pass"))
    assert told == [("r", "1", "cleared")] and alarm.recipes_in_alarm() == frozenset()
    saved.close()
    doc = json.loads(path.read_text())
    assert [t["judged_by"] for t in doc["recipes"]["r"]["tracks"]] == ["m 1", "m 2"]

    # counts saved under other settings are not resumed: learned afresh, the file set aside
    other = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=4, window=8))
    AlarmFile(other, path, every_s=3600).load()
    assert not path.exists() and path.with_name(path.name + ".old").exists()
    other.offer(_judged(r1, "1", "fail"))
    assert other.track("r").state == "learning"


def _track0(d: dict[str, Any], **change: Any) -> bytes:
    """The saved document ``d`` with its first track's fields changed."""
    track = {**d["recipes"]["r"]["tracks"][0], **change}
    return json.dumps({**d, "recipes": {"r": {"current": None, "tracks": [track]}}}).encode()


@pytest.mark.parametrize("damage", [
    lambda d: b"{not json", lambda d: b"[]", lambda d: b"[" * 200_000,
    lambda d: json.dumps({**d, "format": 9}).encode(),
    lambda d: json.dumps({**d, "recipes": []}).encode(),
    lambda d: json.dumps({**d, "recipes": {"r": {"current": ["x", "m 1"], "tracks": []}}}).encode(),
    lambda d: json.dumps({**d, "recipes": {"r": {"current": None, "tracks": [{}] * 5}}}).encode(),
    lambda d: json.dumps({**d, "recipes": {"r": {"tracks": []}}}).encode(),
    lambda d: json.dumps({**d, "recipes": {"r": "x"}}).encode(),
    lambda d: _track0(d, recent="not base64!"),
    lambda d: _track0(d, recent_len=9),  # more than the bits it holds
    lambda d: _track0(d, recent_len=400),  # more than the window
    lambda d: _track0(d, baseline_fails=9),
    lambda d: _track0(d, baseline_inspections=2.9),
    lambda d: _track0(d, baseline_inspections=True),
    lambda d: _track0(d, started_at="yesterday"),
    lambda d: _track0(d, started_at="2026-12-04T10:00:00"),  # no time zone
    lambda d: _track0(d, model=["m"]),
    lambda d: _track0(d, state="panic"),
    lambda d: _track0(d, state="alarm"),  # an alarm needs a full window
    lambda d: _track0(d, declared=2.0, baseline_inspections=0, baseline_fails=0),
    lambda d: _track0(d, declared=0.1),  # given and learned at once
    lambda d: _track0(d).replace(b'"baseline_fails": 1', b'"baseline_fails": Infinity'),
    lambda d: _track0(d).replace(b'"recent_len": 3', b'"recent_len": NaN'),
    lambda d: _track0(d, started_at="0001-01-01T00:00:00+05:00"),  # before year 1 in UTC
])
def test_a_damaged_alarm_file_is_set_aside_and_the_alarm_learns_afresh(
        tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture) -> None:
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.alarm_file import AlarmFile
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    s = FailRateAlarmSettings(baseline_inspections=2, window=4)
    r1 = Recipe(name="r", model="m")
    alarm = FailRateAlarm(s)
    for verdict in ("pass", "fail", "pass"):
        alarm.offer(_judged(r1, "1", verdict))
    path = tmp_path / "fail_rate_alarm.json"
    damaged = damage(alarm.saved())
    path.write_bytes(damaged)
    fresh = FailRateAlarm(s)
    AlarmFile(fresh, path, every_s=3600).load()
    assert "not resumed" in caplog.text or "cannot be resumed" in caplog.text
    assert caplog.text.count("learn afresh") == 1
    assert str(tmp_path) in caplog.text  # the log names the file; no traceback
    assert "Traceback" not in caplog.text
    assert path.with_name(path.name + ".bad").read_bytes() == damaged  # kept for a look
    assert not path.exists() and fresh.status() == []
    fresh.offer(_judged(r1, "1", "pass"))
    assert fresh.track("r").baseline_inspections == 1


def test_a_recipe_that_gives_its_usual_fail_rate_is_judged_from_the_start(tmp_path: Path) -> None:
    """Nothing to learn: a look that is there from the first part raises the alarm once the
    window is full; relearning restarts the window, not the given rate; saved and resumed."""
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.alarm_file import AlarmFile
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    s = FailRateAlarmSettings(baseline_inspections=100, window=4)
    given = Recipe(name="r", model="m", usual_fail_rate=0.02)
    told: list[str] = []
    alarm = FailRateAlarm(s, on_change=lambda c: told.append(c.state))
    path = tmp_path / "alarm.json"
    saved = AlarmFile(alarm, path, every_s=3600)
    alarm.offer(_judged(given, "1", "fail"))
    t = alarm.status()[0]
    assert (t["state"], t["usual_from"], t["usual_fail_rate"], t["baseline_needed"]) == (
        "ok", "recipe", 0.02, 0)
    assert t["bound"] == pytest.approx(0.07)
    for _ in range(2):
        alarm.offer(_judged(given, "1", "fail"))
    assert alarm.status()[0]["state"] == "ok" and told == []  # judged once the window is full
    alarm.offer(_judged(given, "1", "fail"))
    t = alarm.status()[0]
    assert t["state"] == "alarm" and told == ["alarm"]
    assert "its usual 2.0% (the recipe's usual_fail_rate)" in t["why"]
    saved.save()
    again: list[str] = []
    resumed = FailRateAlarm(s, on_change=lambda c: again.append(c.why))
    AlarmFile(resumed, path, every_s=3600).load()
    resumed.offer(_judged(given, "1", "fail"))
    assert resumed.track("r").state == "alarm" and resumed.track("r").declared == 0.02
    assert len(again) == 1 and again[0].startswith("still in alarm after a restart: ")
    assert "(the recipe's usual_fail_rate)" in again[0]
    old = alarm.relearn("r")
    assert old.state == "alarm" and told == ["alarm", "cleared"]
    t = alarm.status()[0]
    assert (t["state"], t["usual_fail_rate"], t["recent_inspections"]) == ("ok", 0.02, 0)
    # the same recipe without it learns (another recipe content: another track)
    learned = Recipe(name="r", model="m")
    alarm.offer(_judged(learned, "1", "pass"))
    t = alarm.status()[0]
    assert (t["state"], t["usual_from"], t["baseline_needed"]) == ("learning", "learned", 100)


def test_the_alarm_file_is_saved_by_its_thread_and_a_failing_save_is_told_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from lineside_inspect.lifecycle import alarm_file
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.alarm_file import AlarmFile
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    caplog.set_level("INFO", logger="lineside.alarm")
    r1 = Recipe(name="r", model="m")
    alarm = FailRateAlarm(FailRateAlarmSettings(baseline_inspections=2, window=4))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the file's folder cannot be made: every save fails
    path = blocked / "fail_rate_alarm.json"
    saved = AlarmFile(alarm, path, every_s=0.02)
    saved.start()
    try:
        def until(ok: Any, what: str) -> None:
            deadline = time.monotonic() + 15
            while not ok():
                assert time.monotonic() < deadline, what
                time.sleep(0.01)

        alarm.offer(_judged(r1, "1", "fail"))
        until(lambda: "cannot save its counts" in caplog.text, "the failure told")
        for verdict in ("pass", "pass"):
            alarm.offer(_judged(r1, "1", verdict))
            time.sleep(0.1)  # several saves tried meanwhile
        assert caplog.text.count("cannot save its counts") == 1
        blocked.unlink()  # the folder can be made again: the thread saves, and says so
        until(path.exists, "the thread's save")
        until(lambda: "saved to" in caplog.text, "the recovery told")
        assert json.loads(path.read_text())["recipes"]["r"]["tracks"][0]["baseline_inspections"] == 2
    finally:
        saved.close()
    # a save that hangs (a disk that stopped answering) does not hang the shutdown
    monkeypatch.setattr(alarm_file, "CLOSE_WAIT_S", 0.05)
    alarm.offer(_judged(r1, "1", "fail"))
    assert saved._lock.acquire()
    try:
        saved.close()
    finally:
        saved._lock.release()
    assert "the last counts are not saved" in caplog.text


def test_once_loaded_resumed_counts_are_settled_with_what_judges_now(tmp_path: Path) -> None:
    """At ready: the same models are shown at once (a standing alarm said again), other
    models end the old alarm and learn from the next inspection, a recipe gone loses its
    counts; each said."""
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings
    from lineside_inspect.server.metrics import Metrics

    s = FailRateAlarmSettings(baseline_inspections=2, window=2)
    r1, r2, r3 = (Recipe(name=n, model="m") for n in ("r", "q", "p"))
    alarm = FailRateAlarm(s)
    for verdict in ("pass", "pass", "fail", "fail"):
        for recipe in (r1, r2, r3):
            alarm.offer(_judged(recipe, "1", verdict))
    doc = json.loads(json.dumps(alarm.saved()))
    told: list[tuple[str, str, str]] = []
    # r was dropped from the config while the server was down; p is judged by version 2
    loaded = {"q": (r2, "m 1"), "p": (r3, "m 2")}
    metrics = Metrics()
    after = FailRateAlarm(s, judging_now=loaded.get, metrics=metrics,
                          on_change=lambda c: told.append((c.recipe, c.state, c.why)))
    assert after.restore(doc) == 3 and after.status() == []
    after.resume()
    assert sorted(told) == [
        ("p", "cleared", "recipe p: judged by m 2 since the restart; its alarm with m 1 ended"),
        ("q", "alarm", "still in alarm after a restart: recipe q (m 1): fail rate 100.0% over "
                       "the last 2 inspections, above the bound 5.0% (its usual 0.0% over its "
                       "first 2). A new look of good parts (a lot, a light, the camera) or a "
                       "run of defects: look at its fails"),
        ("r", "cleared", "recipe r is not loaded since the restart; its alarm with m 1 ended")]
    # shown at once, with its metrics and for the PLC, before any inspection
    assert [(t["recipe"], t["state"]) for t in after.status()] == [("q", "alarm")]
    assert after.recipes_in_alarm() == {"q"}
    assert metrics.registry.get_sample_value("lineside_fail_rate_alarm", {"recipe": "q"}) == 1
    assert set(after.saved()["recipes"]) == {"p", "q"}
    after.resume()  # settled once: nothing more to say
    assert len(told) == 3
    after.offer(_judged(r2, "1", "fail"))
    after.offer(_judged(r3, "2", "fail"))
    assert after.track("q").state == "alarm" and len(told) == 3  # no second "still in alarm"
    assert (after.track("p").judged_by, after.track("p").state) == ("m 2", "learning")
    after.offer(_judged(r3, "1", "fail"))  # a late one of version 1 counts for it, silently
    assert after.track("p").judged_by == "m 2" and len(told) == 3

    # saved with versions 1 then 2 of p; version 1 judges again after the restart (a rollback
    # while it was down): its kept counts are shown at once, its alarm said again
    doc = json.loads(json.dumps(after.saved()))
    told.clear()
    back = FailRateAlarm(s, judging_now={"q": (r2, "m 1"), "p": (r3, "m 1")}.get,
                         on_change=lambda c: told.append((c.recipe, c.state, c.why)))
    back.restore(doc)
    # a PLC trigger before the recipes are all loaded, judged by a passing version 3:
    # counted nowhere current, settling nothing
    back.offer(_judged(r3, "3", "pass"))
    assert back.status() == [] and told == []
    back.resume()
    assert (back.track("p").judged_by, back.track("p").state) == ("m 1", "alarm")
    assert ("p", "alarm") in [(c[0], c[1]) for c in told]
    assert any(c[2].startswith("judged by m 1 again, still in alarm: recipe p (m 1): fail "
                               "rate 100.0%") for c in told)
    assert back.recipes_in_alarm() == {"p", "q"}


def test_after_a_restart_an_alarm_is_said_with_its_rates_of_now_and_can_be_relearned_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    from lineside_inspect.lifecycle.alarm import FailRateAlarm
    from lineside_inspect.lifecycle.config import FailRateAlarmSettings

    s = FailRateAlarmSettings(baseline_inspections=2, window=4, max_fail_rate_increase=0.2)
    r1 = Recipe(name="r", model="m")
    alarm = FailRateAlarm(s)
    for verdict in ("pass", "pass", "pass", "pass", "fail", "fail"):  # 50% of 4: alarm
        alarm.offer(_judged(r1, "1", verdict))
    doc = json.loads(json.dumps(alarm.saved()))
    told: list[tuple[str, str]] = []
    after = FailRateAlarm(s, on_change=lambda c: told.append((c.state, c.why)))
    after.restore(doc)
    after.offer(_judged(r1, "1", "fail"))  # 3 of 4 now
    assert told[0][0] == "alarm" and "fail rate 75.0% over the last 4" in told[0][1]
    # relearned before its first inspection after another restart: said, learned afresh
    again = FailRateAlarm(s, on_change=lambda c: told.append((c.state, c.why)))
    again.restore(doc)
    assert again.relearn("r", actor="ann").state == "alarm"
    assert told[-1][0] == "cleared" and "relearned by ann" in told[-1][1]
    again.offer(_judged(r1, "1", "fail"))
    assert again.track("r").state == "learning" and len(told) == 2  # nothing more to say
    # a usual rate that can never raise the alarm is said once: within the margin (20
    # points) of 100%; 60% is not one any more (its pass rate halved: 80%, session 52)
    lazy = Recipe(name="z", model="m", usual_fail_rate=0.85)
    for _ in range(3):
        again.offer(_judged(lazy, "1", "pass"))
    assert caplog.text.count("its alarm cannot be raised") == 1
    assert "usual fail rate 85.0%, given by the recipe" in caplog.text
    again.offer(_judged(Recipe(name="y", model="m", usual_fail_rate=0.6), "1", "pass"))
    assert caplog.text.count("its alarm cannot be raised") == 1
    with pytest.raises(ValueError, match="usual_fail_rate"):
        Recipe.model_validate({"name": "t", "model": "m", "usual_fail_rate": True})
    with pytest.raises(ValueError, match="usual_fail_rate"):
        Recipe.model_validate({"name": "t", "model": "m", "usual_fail_rate": "0.02"})


def test_golden_and_gate_commands_refuse_arguments_that_mean_nothing(tmp_path: Path) -> None:
    """--limit -3 was a traceback (0 silently 500 from a store), --store of a typo made a new
    store there, --allowance -5 was taken, and a good-only package was gated against a
    detector of another name (lifecycle review)."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    models = Path(__file__).resolve().parents[2] / "models"
    cli = CliRunner()
    data_dir = ["--data-dir", str(tmp_path / "srv")]
    for limit in ("-3", "0"):
        r = cli.invoke(app, ["golden", "create", "x", "--data", str(SAMPLE), "--limit", limit,
                             *data_dir])
        assert r.exit_code == 2 and "--limit" in r.output and "Traceback" not in r.output
    typo = tmp_path / "no-store-here"
    typo.mkdir()
    r = cli.invoke(app, ["golden", "create", "x", "--store", str(typo), *data_dir])
    assert r.exit_code == 2 and "no lineside.db here" in r.output, r.output
    assert list(typo.iterdir()) == []  # nothing made where a store was only to be read
    r = cli.invoke(app, ["golden", "create", "s", "--data", str(SAMPLE), "--limit", "4",
                         *data_dir])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["gate", str(models / "deeppcb" / "1-int8"), "--against",
                         str(models / "deeppcb" / "1"), "--golden", "s", "--allowance", "-5",
                         *data_dir])
    assert r.exit_code == 2 and "--allowance" in r.output
    r = cli.invoke(app, ["gate", str(models / "deeppcb-good" / "1"), "--against",
                         str(models / "deeppcb" / "1"), "--golden", "s", *data_dir])
    assert r.exit_code == 2 and "a gate compares two versions of one model" in r.output
    # a recipe of another model judged the versions by rules not theirs (the server's
    # gate refuses it; the command took it)
    recipes = Path(__file__).resolve().parents[2] / "configs" / "recipes"
    r = cli.invoke(app, ["gate", str(models / "deeppcb" / "1-int8"), "--against",
                         str(models / "deeppcb" / "1"), "--golden", "s", "--recipe",
                         str(recipes / "deeppcb-ref.yaml"), *data_dir])
    assert r.exit_code == 2 and "judges model deeppcb-ref, not deeppcb" in r.output, r.output


def test_a_rollback_is_refused_while_a_recipe_following_the_active_version_cannot_follow(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Version 2r renamed class open to opening; a recipe put while it judged counts its
    opening defects from 0.05. Rolled back to 1 (no class opening), the floor was dropped
    unseen and 1's open defects judged at its card's 0.68: an activation of 1 is refused
    so, a rollback was not (lifecycle review, session 36). The automatic rollback
    (revert) still goes back: the line must not stay on a rejected version."""
    from lineside_inspect.errors import RecipesCannotFollow
    from lineside_inspect.server.registry import Registry

    from .conftest import MODEL
    from .test_fleet_rollout_boxes import renamed

    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    registry.load_model(renamed(tmp_path, "2r", "open", "opening"))
    registry.add_recipe(Recipe(name="line1", model="deeppcb", min_score={"opening": 0.05}))
    with pytest.raises(RecipesCannotFollow, match="deeppcb 1 cannot judge under recipe line1"):
        registry.rollback("deeppcb")
    assert registry.models()["deeppcb"].active == "2r"
    with pytest.raises(RecipesCannotFollow):
        registry.activate("deeppcb", "1")  # (as an activation is)
    with caplog.at_level("WARNING", logger="lineside.registry"):
        assert registry.revert("deeppcb", "2r", "1", forget=True)
    assert registry.models()["deeppcb"].active == "1"
    # gone back all the same, and said: the dropped rule was unseen (not logged)
    said = [r.getMessage() for r in caplog.records if r.name == "lineside.registry"]
    assert len(said) == 1 and "rolled back to 1 although" in said[0] and "line1" in said[0]


@pytest.mark.parametrize("field", ["max_fail_rate_ratio", "min_watch_s"])
def test_rollout_bounds_are_finite(field: str) -> None:
    """A ratio of .inf (YAML) put the bound over a previous rate of 0 at NaN: a version
    failing every part was never rolled back, the absolute margin included (lifecycle
    review, session 36). Refused with the setting named, as the alarm's are."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        RolloutSettings(**{field: float("inf")})
    w = Watch("m", "2", "1", None, datetime.now(UTC), "a", None, 500, 0, inspections=100,
              fails=100)
    assert judge_watch(w, RolloutSettings(max_fail_rate_ratio=1e300))[0] == "rolled_back"


def test_the_gate_command_without_recipe_gates_a_version_that_renamed_a_class(
        tmp_path: Path) -> None:
    """Without --recipe the command judges by the active card's own recipe, whose floors
    a gate leaves out (rules_of: each card at its own thresholds), as the server's gate
    does: a candidate that renamed a class was refused over the active card's floors."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    bundled = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
    v2 = tmp_path / "deeppcb" / "2"
    shutil.copytree(bundled, v2)
    card = json.loads((v2 / "model.json").read_text())
    card["version"] = "2"
    card["class_names"] = ["bridge" if n == "short" else n for n in card["class_names"]]
    for floors in (card["thresholds"], card["default_recipe"]["min_score"]):
        floors["bridge"] = floors.pop("short")
    import onnx

    graph = onnx.load(v2 / "model.onnx")
    for prop in graph.metadata_props:
        if prop.key == "lineside.class_names":
            prop.value = json.dumps(card["class_names"])
    onnx.save(graph, v2 / "model.onnx")
    card["sha256"] = hashlib.sha256((v2 / "model.onnx").read_bytes()).hexdigest()
    (v2 / "model.json").write_text(json.dumps(card))
    cli = CliRunner()
    data_dir = ["--data-dir", str(tmp_path / "srv")]
    r = cli.invoke(app, ["golden", "create", "s", "--data", str(SAMPLE), "--limit", "4",
                         *data_dir])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["gate", str(v2), "--against", str(bundled), "--golden", "s",
                         *data_dir])
    assert r.exit_code in (0, 1) and "| escapes (of" in r.output, r.output


def test_a_shadow_whose_process_ends_before_it_is_ready_is_refused_at_once(monkeypatch):
    """A shadow's process that ended without a word (killed, a crash loading its graph)
    was waited for the whole start timeout (120 s), the POST held; it is said at once,
    with its exit code (session 42). ``os._exit`` as the process's main ends it at its
    start (it takes one argument, given seven)."""
    import os

    from lineside_inspect.errors import PackageError
    from lineside_inspect.lifecycle import shadow as shadow_module
    from lineside_inspect.lifecycle.config import ShadowSettings
    from lineside_inspect.package import load_package

    monkeypatch.setattr(shadow_module, "shadow_worker", SimpleNamespace(
        serve=os._exit, READY=shadow_module.shadow_worker.READY,
        FAILED=shadow_module.shadow_worker.FAILED))
    # the old wait would run out here, not in 120 s: its message is the one refused below
    monkeypatch.setattr(shadow_module, "START_TIMEOUT_S", 30.0)
    runner = shadow_module.ShadowRunner(ShadowSettings(), records=None, store=None)  # type: ignore[arg-type]
    session = shadow_module.ShadowSession("run", "deeppcb", load_package(MODEL), 1.0,
                                          datetime.now(UTC), "test")
    with pytest.raises(PackageError) as err:
        runner._launch(session)
    assert "its process ended (exit code 1) before its model was loaded" in err.value.message
    assert not session.process.is_alive()
