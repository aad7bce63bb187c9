"""Exact and near-duplicate images: reported by ``data validate`` (a problem when copies
sit on both sides of a split), removed by ``--dedupe``, kept on one side by ``split``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import (
    Box,
    Dataset,
    ImageRecord,
    check_dir,
    read_dataset,
    split_dataset,
    write_dataset,
)
from lineside_inspect.dataset.duplicates import NEAR_BITS, find_duplicates, fingerprint, fingerprints
from lineside_inspect.opencv import cv2

runner = CliRunner()


def pixels(seed: int, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), size,
                      interpolation=cv2.INTER_LINEAR)


def jpeg(path: Path, image: np.ndarray, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def with_copy(raw: Path, stem: str, seed: int) -> Path:
    """``stem.jpg`` and its byte-identical ``stem-copy.jpg``; the first's path."""
    src = jpeg(raw / f"{stem}.jpg", pixels(seed))
    (raw / f"{stem}-copy.jpg").write_bytes(src.read_bytes())
    return src


def record(src: Path, name: str, split: str | None, *, boxes: int = 0) -> ImageRecord:
    h, w = cv2.imread(str(src)).shape[:2]
    return ImageRecord(name, w, h, [Box(2, 2, 20, 20, "dent")] * boxes, split=split, source=src)


def leaky_set(tmp_path: Path) -> Path:
    """``a`` in train and its byte-identical copy in val; ``b`` and a re-encoded, resized
    ``b`` both in train; three distinct images."""
    raw = tmp_path / "raw"
    a = jpeg(raw / "a.jpg", pixels(1))
    (raw / "a-copy.jpg").write_bytes(a.read_bytes())
    b = jpeg(raw / "b.jpg", pixels(2))
    jpeg(raw / "b-near.jpg", cv2.resize(pixels(2), (80, 60), interpolation=cv2.INTER_AREA), 60)
    for n in (3, 4, 5):
        jpeg(raw / f"c{n}.jpg", pixels(n))
    recs = [record(a, "a.jpg", "train", boxes=1), record(raw / "a-copy.jpg", "a-copy.jpg", "val", boxes=1),
            record(b, "b.jpg", "train"), record(raw / "b-near.jpg", "b-near.jpg", "train"),
            record(raw / "c3.jpg", "c3.jpg", "train", boxes=2), record(raw / "c4.jpg", "c4.jpg", "val"),
            record(raw / "c5.jpg", "c5.jpg", "val", boxes=1)]
    write_dataset(Dataset(["dent"], recs), tmp_path / "ds")
    return tmp_path / "ds"


def test_validate_flags_copies_across_the_split(tmp_path: Path) -> None:
    root = leaky_set(tmp_path)
    report = check_dir(root)
    groups = {(g.kind, tuple(r.file_name for r in g.members), g.across_splits) for g in report.duplicates}
    assert groups == {("exact", ("a.jpg", "a-copy.jpg"), True), ("near", ("b.jpg", "b-near.jpg"), False)}
    [problem] = report.problems  # only the leak is a problem; b and its twin are one split
    assert "exact duplicate images in different splits" in problem.message
    assert "'a.jpg' (train)" in problem.message and "'a-copy.jpg' (val)" in problem.message
    r = runner.invoke(app, ["data", "validate", str(root)])
    assert r.exit_code == 2
    assert "warning: near duplicate images in one split: 'b.jpg' (train), 'b-near.jpg' (train)" in r.stderr
    assert "1 problem(s)" in r.stderr and "in different splits" in r.stderr


def test_dedupe_keeps_one_of_each_group(tmp_path: Path) -> None:
    root = leaky_set(tmp_path)
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    assert "removed 2" in r.stdout and r.stdout.rstrip().endswith("valid")
    names = [i["file_name"] for i in json.loads((root / "annotations.json").read_text())["images"]]
    # labels tie: the evaluation copy stays, so val keeps its images; b keeps the first
    assert names == ["a-copy.jpg", "b.jpg", "c3.jpg", "c4.jpg", "c5.jpg"]
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(names)
    assert check_dir(root).duplicates == []


def test_split_never_puts_duplicates_on_both_sides(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    recs = []
    for n in range(16):
        recs.append(record(jpeg(raw / f"u{n}.jpg", pixels(100 + n)), f"u{n}.jpg", None, boxes=n % 2))
    for n in range(4):  # exact copies
        a = jpeg(raw / f"e{n}.jpg", pixels(200 + n))
        (raw / f"e{n}-copy.jpg").write_bytes(a.read_bytes())
        recs += [record(a, f"e{n}.jpg", None, boxes=1),
                 record(raw / f"e{n}-copy.jpg", f"e{n}-copy.jpg", None)]
    for n in range(4):  # near copies: re-encoded at another quality
        recs.append(record(jpeg(raw / f"n{n}.jpg", pixels(300 + n)), f"n{n}.jpg", None))
        recs.append(record(jpeg(raw / f"n{n}-q.jpg", pixels(300 + n), 50), f"n{n}-q.jpg", None, boxes=1))
    dataset = Dataset(["dent"], recs)
    for seed in range(4):
        split_dataset(dataset, val=0.5, by="image", seed=seed)
        by_name = {r.file_name: r.split for r in dataset.images}
        for n in range(4):
            assert by_name[f"e{n}.jpg"] == by_name[f"e{n}-copy.jpg"], (seed, n)
            assert by_name[f"n{n}.jpg"] == by_name[f"n{n}-q.jpg"], (seed, n)
        assert set(by_name.values()) == {"train", "val"}


def test_near_hash_tolerates_reencoding_but_tells_images_apart() -> None:
    base = pixels(7, (200, 200))
    _, buf = cv2.imencode(".png", base)
    ref = fingerprint(buf.tobytes()).dhash

    def distance(image: np.ndarray, ext: str = ".jpg") -> int:
        _, data = cv2.imencode(ext, image)
        h = fingerprint(data.tobytes()).dhash
        assert h is not None and ref is not None
        return int(np.bitwise_count(h ^ ref).sum())

    assert distance(base) <= NEAR_BITS  # JPEG re-encode
    assert distance(cv2.resize(base, (150, 150), interpolation=cv2.INTER_AREA)) <= NEAR_BITS
    assert distance(cv2.convertScaleAbs(base, alpha=1.1, beta=8)) <= NEAR_BITS
    assert all(distance(pixels(s, (200, 200))) > 4 * NEAR_BITS for s in range(20, 30))
    assert fingerprint(b"not an image").dhash is None


def test_reference_twins_are_not_duplicates(sample: Path) -> None:
    """A DeepPCB test image and its defect-free template look alike by design."""
    ds = read_dataset(sample)
    prints = fingerprints(ds)
    twins = [(r.file_name, r.reference) for r in ds.images if r.reference]
    close = [t for t in twins if int(np.bitwise_count(
        prints[t[0]].dhash ^ prints[t[1]].dhash).sum()) <= NEAR_BITS]  # type: ignore[operator]
    assert close, "the sample should hold twins within the near-duplicate distance"
    assert check_dir(sample).duplicates == []


def test_dedupe_deletes_nothing_outside_the_dataset(tmp_path: Path) -> None:
    """A doctored annotations.json naming '../outside.jpg' (a copy of a dataset image) is a
    problem of its own, and --dedupe, refused while problems remain, deletes nothing outside
    images/ (its deletion is also confined to images/)."""
    root = leaky_set(tmp_path)
    outside = tmp_path / "ds" / "outside.jpg"
    outside.write_bytes((root / "images" / "a.jpg").read_bytes())
    doc = json.loads((root / "annotations.json").read_text())
    doc["images"][0]["file_name"] = "../outside.jpg"  # 'a.jpg', the copy --dedupe drops
    (root / "annotations.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 2 and "'../outside.jpg' must be a relative path inside images/" in r.stderr
    assert outside.is_file()


def test_flat_pictures_whose_hashes_say_little_are_told_apart(tmp_path: Path) -> None:
    """Mostly flat pictures (blank boards, copper pours) have few dHash bits set, so
    unrelated ones sit within NEAR_BITS of each other: on DeepPCB a chain of them tied
    three boards together. The thumbnails' correlation tells them apart; a re-encoded copy
    is still a duplicate. A blank frame is one only when byte-identical: a ladder of blank
    frames at slowly changing brightness must not tie their groups together."""
    white = np.full((240, 320), 255, np.uint8)
    left, top, corner = white.copy(), white.copy(), white.copy()
    left[:, 200:] = 0  # white then black: falling edges set no bit
    top[120:, :] = 0
    corner[:60, 250:] = 40
    raw = tmp_path / "raw"
    names = {"left": left, "top": top, "corner": corner, "blank": white}
    recs = [record(jpeg(raw / f"{n}.jpg", im), f"{n}.jpg", None) for n, im in names.items()]
    recs.append(record(jpeg(raw / "left-q.jpg", left, 60), "left-q.jpg", None))
    (raw / "blank-copy.jpg").write_bytes((raw / "blank.jpg").read_bytes())
    recs.append(record(raw / "blank-copy.jpg", "blank-copy.jpg", None))
    for level in range(100, 256, 6):  # blank frames, each 6 grey levels from the next
        grey = np.full((240, 320), level, np.uint8)
        recs.append(record(jpeg(raw / f"grey{level}.jpg", grey), f"grey{level}.jpg", None))
    dataset = Dataset(["dent"], recs)
    prints = fingerprints(dataset)
    hashes = [prints[f"{n}.jpg"].dhash for n in names]
    # what made the fault: every pair is "near" by the hash alone
    assert all(int(np.bitwise_count(a ^ b).sum()) <= NEAR_BITS  # type: ignore[operator]
               for a in hashes for b in hashes)
    groups = find_duplicates(dataset, prints)
    assert sorted(tuple(sorted(r.file_name for r in g.members)) for g in groups) == [
        ("blank-copy.jpg", "blank.jpg"), ("left-q.jpg", "left.jpg")]


def test_images_one_pixel_wide_are_fingerprinted(tmp_path: Path) -> None:
    """A 1-px side has no half-size decode (OpenCV raised, and data split ended in a
    traceback): such an image is read whole."""
    for shape in ((1, 1), (1, 40), (40, 1)):
        ok, buf = cv2.imencode(".png", np.full(shape, 200, np.uint8))
        assert ok
        assert fingerprint(buf.tobytes()).dhash is not None, shape


def test_the_indexed_search_finds_what_comparing_every_pair_finds() -> None:
    """Multi-index hashing (only hashes sharing a byte range are compared) against the
    every-pair search: planted pairs at 0-12 bits, a block of low-information hashes,
    a run of identical copies longer than a comparison block."""
    from lineside_inspect.dataset.duplicates import _compare_all, _near_pairs

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    for _ in range(200):
        i, j = rng.integers(0, 1500, 2)
        hashes[j] = hashes[i]
        for bit in rng.choice(256, int(rng.integers(0, 13)), replace=False):
            hashes[j, bit // 8] ^= np.uint8(1 << (bit % 8))
    hashes[:100] = 0
    hashes[np.arange(100), rng.integers(0, 32, 100)] = 1
    hashes[200:260] = hashes[200]
    for max_bits in (0, 3, NEAR_BITS, 12, 40):
        expected = sorted(_compare_all(hashes, max_bits))
        assert len(expected) > 1700
        assert sorted(_near_pairs(hashes, max_bits)) == expected, max_bits


def texture(seed: int) -> np.ndarray:
    """A rolled-metal-like surface, 200 px grey: streaks along the rows and grain."""
    rng = np.random.default_rng(seed)
    streaks = cv2.GaussianBlur(rng.standard_normal((200, 200)).astype(np.float32), (0, 0),
                               sigmaX=30, sigmaY=1.2)
    grain = rng.standard_normal((200, 200)).astype(np.float32)
    img = 130 + 8 * streaks / streaks.std() + 6 * grain
    return np.clip(img, 0, 255).astype(np.uint8)


def test_reencoded_textures_are_near_duplicates(tmp_path: Path) -> None:
    """A texture's dHash rests on gradients near zero: a re-save at JPEG quality 70-80,
    a little brighter, flipped more bits than NEAR_BITS and went unreported (steel
    surfaces, fabric, wood). The correlation search finds such copies, in val or train,
    and still tells different pictures of one surface apart."""
    raw = tmp_path / "raw"
    recs = []
    for s in range(8):
        recs.append(record(jpeg(raw / f"t{s}.jpg", texture(s)), f"t{s}.jpg", "train"))
    brighter = cv2.convertScaleAbs(texture(0), alpha=1.05, beta=0)
    recs.append(record(jpeg(raw / "t0-val.jpg", brighter, 70), "t0-val.jpg", "val"))
    recs.append(record(jpeg(raw / "t3-q80.jpg", texture(3), 80), "t3-q80.jpg", "train"))
    dataset = Dataset(["dent"], recs)
    prints = fingerprints(dataset)

    def bits(a: str, b: str) -> int:
        return int(np.bitwise_count(prints[a].dhash ^ prints[b].dhash).sum())  # type: ignore[operator]

    assert bits("t0.jpg", "t0-val.jpg") > NEAR_BITS  # what made the fault
    groups = find_duplicates(dataset, prints)
    assert sorted(tuple(sorted(r.file_name for r in g.members)) for g in groups) == [
        ("t0-val.jpg", "t0.jpg"), ("t3-q80.jpg", "t3.jpg")]
    assert [g.across_splits for g in groups if g.members[0].file_name == "t0.jpg"] == [True]


def test_copies_labelled_differently(tmp_path: Path) -> None:
    """Byte-identical copies with other labels: one is mislabelled, a problem, and
    --dedupe refuses rather than keep one label silently. Near copies labelled
    differently may be photos of one part region with different defects (DeepPCB holds
    such): reported, and --dedupe leaves them whole."""
    raw = tmp_path / "raw"
    a = jpeg(raw / "a.jpg", pixels(1))
    (raw / "a-copy.jpg").write_bytes(a.read_bytes())
    jpeg(raw / "b.jpg", pixels(2))
    jpeg(raw / "b-near.jpg", pixels(2), 60)
    jpeg(raw / "c.jpg", pixels(3))
    recs = [ImageRecord("a.jpg", 96, 72, [Box(2, 2, 20, 20, "dent")], split="train", source=a),
            ImageRecord("a-copy.jpg", 96, 72, [Box(2, 2, 20, 20, "scratch")], split="val",
                        source=raw / "a-copy.jpg"),
            ImageRecord("b.jpg", 96, 72, [Box(2, 2, 20, 20, "dent")], split="train",
                        source=raw / "b.jpg"),
            ImageRecord("b-near.jpg", 96, 72, [], split="train", source=raw / "b-near.jpg"),
            ImageRecord("c.jpg", 96, 72, [], split="val", source=raw / "c.jpg")]
    write_dataset(Dataset(["dent", "scratch"], recs), tmp_path / "ds")
    root = tmp_path / "ds"
    report = check_dir(root)
    # one pair, one problem: the conflict, which says the split too (it was reported a
    # second time as a cross-split duplicate: session 49)
    [conflict] = [p.message for p in report.problems]
    assert conflict.startswith("exact copies of one picture in different splits, labelled "
                               "differently: 'a.jpg' (train) [dent], 'a-copy.jpg' (val) [scratch]")
    assert "one of them is mislabelled, and evaluation would score training images; fix the " \
        "labels (or remove the wrong copy), then run" in conflict
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 2 and "problem(s) to fix before --dedupe" in r.stderr
    assert "mislabelled" in r.stderr
    assert len(json.loads((root / "annotations.json").read_text())["images"]) == 5

    # the label of a-copy mended: --dedupe removes a copy of a, leaves b's pair whole
    doc = json.loads((root / "annotations.json").read_text())
    for ann in doc["annotations"]:
        ann["category_id"] = next(c["id"] for c in doc["categories"] if c["name"] == "dent")
    (root / "annotations.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    assert "removed 1" in r.stdout and "left whole: near duplicate images in one split, " \
        "labelled differently: 'b.jpg' (train) [dent], 'b-near.jpg' (train) [good]" in r.stderr
    names = sorted(i["file_name"] for i in json.loads((root / "annotations.json").read_text())["images"])
    assert names == ["a-copy.jpg", "b-near.jpg", "b.jpg", "c.jpg"]


def test_copies_labelled_differently_in_one_split(tmp_path: Path) -> None:
    """Byte-identical copies in one split with other labels are a problem whose remedy
    is to fix the label; no warning beside it says --dedupe would leave them whole."""
    raw = tmp_path / "raw"
    a = jpeg(raw / "a.jpg", pixels(1))
    (raw / "a-copy.jpg").write_bytes(a.read_bytes())
    jpeg(raw / "c.jpg", pixels(3))
    recs = [ImageRecord("a.jpg", 96, 72, [Box(2, 2, 20, 20, "dent")], split="train", source=a),
            ImageRecord("a-copy.jpg", 96, 72, [Box(2, 2, 20, 20, "scratch")], split="train",
                        source=raw / "a-copy.jpg"),
            ImageRecord("c.jpg", 96, 72, [], split="val", source=raw / "c.jpg")]
    write_dataset(Dataset(["dent", "scratch"], recs), tmp_path / "ds")
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds")])
    assert r.exit_code == 2
    assert "one of them is mislabelled; fix the labels" in r.stderr
    assert "leaves it whole" not in r.stderr and "warning:" not in r.stderr


def test_a_mislabelled_copy_inside_a_group_of_near_copies(tmp_path: Path) -> None:
    """Two byte-identical copies labelled differently stay a problem when a re-encoding
    of the picture joins them (the group is then 'near'); and copies in val and test
    are not said to be training images."""
    raw = tmp_path / "raw"
    a = with_copy(raw, "a", 1)
    jpeg(raw / "a-q60.jpg", pixels(1), 60)
    c = with_copy(raw, "c", 3)
    jpeg(raw / "d.jpg", pixels(4))
    dent, scratch = [Box(2, 2, 20, 20, "dent")], [Box(2, 2, 20, 20, "scratch")]
    recs = [ImageRecord("a.jpg", 96, 72, dent, split="train", source=a),
            ImageRecord("a-copy.jpg", 96, 72, scratch, split="train", source=raw / "a-copy.jpg"),
            ImageRecord("a-q60.jpg", 96, 72, dent, split="train", source=raw / "a-q60.jpg"),
            ImageRecord("c.jpg", 96, 72, [], split="val", source=c),
            ImageRecord("c-copy.jpg", 96, 72, [], split="test", source=raw / "c-copy.jpg"),
            ImageRecord("d.jpg", 96, 72, [], split="train", source=raw / "d.jpg")]
    write_dataset(Dataset(["dent", "scratch"], recs), tmp_path / "ds")
    report = check_dir(tmp_path / "ds")
    near = next(g for g in report.duplicates if g.members[0].file_name == "a.jpg")
    assert near.kind == "near" and len(near.members) == 3
    messages = [p.message for p in report.problems]
    assert len(messages) == 2, messages
    conflict = next(m for m in messages if "mislabelled" in m)
    assert conflict.startswith("exact copies of one picture in one split, labelled differently: "
                               "'a.jpg' (train) [dent], 'a-copy.jpg' (train) [scratch]")
    leak = next(m for m in messages if "c.jpg" in m)
    assert "test and val would score one picture twice" in leak and "training" not in leak
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "warning:" not in r.stderr
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds"), "--dedupe"])
    assert r.exit_code == 2 and "problem(s) to fix before --dedupe" in r.stderr
    assert len(json.loads((tmp_path / "ds" / "annotations.json").read_text())["images"]) == 6


def test_dedupe_inside_a_group_labelled_differently(tmp_path: Path) -> None:
    """A near group labelled differently is kept, but for its byte-identical copies
    labelled alike (one of them goes), said once; a copy boxed elsewhere says so."""
    raw = tmp_path / "raw"
    a = with_copy(raw, "a", 1)
    jpeg(raw / "a-q60.jpg", pixels(1), 60)
    c = with_copy(raw, "c", 3)
    e = with_copy(raw, "e", 5)
    jpeg(raw / "d.jpg", pixels(4))
    dent = [Box(2, 2, 20, 20, "dent")]
    recs = [ImageRecord("a.jpg", 96, 72, dent, split="train", source=a),
            ImageRecord("a-copy.jpg", 96, 72, dent, split="train", source=raw / "a-copy.jpg"),
            ImageRecord("a-q60.jpg", 96, 72, [Box(2, 2, 20, 20, "scratch")], split="train",
                        source=raw / "a-q60.jpg"),
            ImageRecord("c.jpg", 96, 72, [], split="val", source=c),
            ImageRecord("c-copy.jpg", 96, 72, [], split=None, source=raw / "c-copy.jpg"),
            ImageRecord("e.jpg", 96, 72, dent, split="train", source=e),
            ImageRecord("e-copy.jpg", 96, 72, [Box(40, 30, 60, 50, "dent")], split="train",
                        source=raw / "e-copy.jpg"),
            ImageRecord("d.jpg", 96, 72, [], split="val", source=raw / "d.jpg")]
    write_dataset(Dataset(["dent", "scratch"], recs), tmp_path / "ds")
    root = tmp_path / "ds"
    groups = {g.members[0].file_name: g for g in check_dir(root).duplicates}
    assert groups["e.jpg"].describe().startswith(
        "exact duplicate images in one split, labelled differently (the same classes, boxed in "
        "other places)")
    # lineside train takes the train split only: an unsplit copy of a val image is no leak
    assert not groups["c.jpg"].across_splits
    assert not any("c.jpg" in p.message for p in check_dir(root).problems)
    # the mislabelled e pair blocks --dedupe; mended, --dedupe runs
    doc = json.loads((root / "annotations.json").read_text())
    e_copy = next(i["id"] for i in doc["images"] if i["file_name"] == "e-copy.jpg")
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != e_copy]
    doc["images"] = [i for i in doc["images"] if i["id"] != e_copy]
    (root / "annotations.json").write_text(json.dumps(doc))
    r = runner.invoke(app, ["data", "validate", str(root), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    assert "removed 2" in r.stdout and "removed a-copy.jpg" in r.stdout  # and c's unsplit copy
    assert "kept one image of each of 2 duplicate group(s) or sets of copies, removed 2" in r.stdout
    assert "left whole: near duplicate images in one split, labelled differently: 'a.jpg' " \
        "(train) [dent], 'a-q60.jpg' (train) [scratch] (no copy's labels stand for the " \
        "others'; only its byte-identical copies labelled alike were removed)" in r.stderr
    assert "warning: near duplicate images in one split" not in r.stderr  # said once
    names = sorted(i["file_name"] for i in json.loads((root / "annotations.json").read_text())["images"])
    assert names == ["a-q60.jpg", "a.jpg", "c.jpg", "d.jpg", "e.jpg"]


def test_a_group_that_forms_after_dedupe_is_still_reported(tmp_path: Path) -> None:
    """Nine near copies and a byte copy of one: an image like more than 8 others is matched
    by bytes only, so only the byte pair is a group; removing the copy brings the nine under
    the limit, and the group they then form (labelled differently) is warned of, not taken
    for one --dedupe already reported."""
    raw = tmp_path / "raw"
    base = pixels(7).astype(np.int16)
    rng = np.random.default_rng(0)
    recs = []
    for i in range(9):
        img = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        src = jpeg(raw / f"y{i}.jpg", img, 90 - i)
        recs.append(ImageRecord(f"y{i}.jpg", 96, 72, [Box(2, 2, 20, 20, "dent")] if i == 1 else [],
                                split="train", source=src))
    (raw / "y8-copy.jpg").write_bytes((raw / "y8.jpg").read_bytes())
    recs.append(ImageRecord("y8-copy.jpg", 96, 72, [], split="train", source=raw / "y8-copy.jpg"))
    recs.append(ImageRecord("v.jpg", 96, 72, [], split="val", source=jpeg(raw / "v.jpg", pixels(8))))
    write_dataset(Dataset(["dent"], recs), tmp_path / "ds")
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds"), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    assert "removed y8-copy.jpg" in r.stdout and "left whole" not in r.stderr
    assert "warning: near duplicate images in one split, labelled differently: 'y0.jpg'" in r.stderr


def test_dedupe_is_done_in_one_run(tmp_path: Path) -> None:
    """Ten encodings of one picture: an image alike to more than 8 others joins no group,
    so one --dedupe kept 2, the next validate called them duplicates and a second
    --dedupe removed another (new-user review). One run goes on until nothing is left."""
    raw = tmp_path / "raw"
    base = pixels(5).astype(np.int16)
    rng = np.random.default_rng(1)
    recs = []
    for i in range(10):  # noisier and noisier: the first alike to more of the others
        img = np.clip(base + rng.integers(-2 * i // 3 - 1, 2 * i // 3 + 2, base.shape), 0,
                      255).astype(np.uint8)
        recs.append(ImageRecord(f"c{i}.jpg", 96, 72, [], split="train",
                                source=jpeg(raw / f"c{i}.jpg", img, 95 - 3 * i)))
    recs.append(ImageRecord("v.jpg", 96, 72, [], split="val", source=jpeg(raw / "v.jpg", pixels(8))))
    write_dataset(Dataset(["dent"], recs), tmp_path / "ds")
    r = runner.invoke(app, ["data", "validate", str(tmp_path / "ds"), "--dedupe"])
    assert r.exit_code == 0, r.stderr
    names = sorted(i["file_name"] for i in json.loads(
        (tmp_path / "ds" / "annotations.json").read_text())["images"])
    assert len(names) == 2 and "v.jpg" in names, names
    assert "removed 9" in r.stdout and "warning: " not in r.stderr, r.stdout + r.stderr
    again = runner.invoke(app, ["data", "validate", str(tmp_path / "ds"), "--dedupe"])
    assert again.exit_code == 0 and "removed 0" in again.stdout, again.stdout
