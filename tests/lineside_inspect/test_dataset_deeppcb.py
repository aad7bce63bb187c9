"""Importing the full DeepPCB training split, checked against its source files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lineside_inspect.dataset import find_duplicates, import_dataset, read_dataset, split_dataset
from lineside_inspect.dataset.importers import DEEPPCB_CLASSES


def _source_counts(root: Path) -> tuple[int, int, Counter[str]]:
    tests = list(root.rglob("*_test.jpg"))
    temps = list(root.rglob("*_temp.jpg"))
    boxes: Counter[str] = Counter()
    for t in tests:
        txt = t.parent.parent / f"{t.parent.name}_not" / (t.name[: -len("_test.jpg")] + ".txt")
        for line in txt.read_text().splitlines():
            if line.strip():
                boxes[DEEPPCB_CLASSES[int(line.replace(",", " ").split()[4]) - 1]] += 1
    return len(tests), len(temps), boxes


def test_full_import_counts_and_group_split(deeppcb: Path, tmp_path: Path) -> None:
    n_test, n_temp, boxes = _source_counts(deeppcb)
    dataset, skipped = import_dataset("deeppcb", deeppcb, tmp_path / "pcb")
    assert not skipped
    defective = [r for r in dataset.images if r.boxes]
    good = [r for r in dataset.images if not r.boxes]
    assert (len(defective), len(good)) == (n_test, n_temp) == (1000, 1000)
    got = Counter(b.label for r in dataset.images for b in r.boxes)
    assert got == boxes
    # every template sits in the same group as its defective twin, and is its reference
    groups = {r.file_name: r.group for r in dataset.images}
    for r in defective:
        assert r.reference == r.file_name.replace("_test.jpg", "_temp.jpg")
        assert groups[r.reference] == r.group
    assert all(r.reference is None for r in good)
    assert read_dataset(tmp_path / "pcb").images[0].reference == dataset.images[0].reference

    # the duplicates from the pixels (2000 decodes) once for the first and last split;
    # the second finds its own, as a fresh `data split` would
    duplicates = find_duplicates(dataset)
    counts = split_dataset(dataset, val=0.2, test=0.1, by="group", seed=0,
                           duplicates=duplicates)
    assert sum(counts.values()) == 2000 and all(counts.values())
    by_group: dict[str | None, set[str | None]] = {}
    for r in dataset.images:
        by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values()), by_group
    # deterministic for a seed
    again = read_dataset(tmp_path / "pcb")
    split_dataset(again, val=0.2, test=0.1, by="group", seed=0)
    assert [r.split for r in again.images] == [r.split for r in dataset.images]

    # the benchmarks' split (docs/benchmarks.md): the two held-out boards, nothing more.
    # Mostly blank boards once made near-duplicate chains that took two more boards along
    split_dataset(again, val=0.2, val_groups=["group77000", "group92000"], seed=0,
                  duplicates=duplicates)
    val_groups = Counter(r.group for r in again.images if r.split == "val")
    assert val_groups == {"group77000": 200, "group92000": 222}
