"""Rebuild datasets/deeppcb-sample from the full DeepPCB training split.

Takes the first N pairs of every DeepPCB group (a board each), imports them through
the normal importer and splits them by group. Usage:
    python tools/make_sample.py ../shared/datasets/deeppcb datasets/deeppcb-sample
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from lineside_inspect.dataset import import_dataset, save_annotations, split_dataset

PAIRS_PER_GROUP = 5


def main(src: Path, dst: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for group in sorted((src / "PCBData").glob("group*")):
            for test in sorted(group.glob("*/*_test.jpg"))[:PAIRS_PER_GROUP]:
                stem = test.name[: -len("_test.jpg")]
                for f in (test, test.with_name(f"{stem}_temp.jpg"),
                          test.parent.parent / f"{test.parent.name}_not" / f"{stem}.txt"):
                    target = Path(tmp) / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, target)
        dataset, _ = import_dataset("deeppcb", tmp, dst, overwrite=True)
    split_dataset(dataset, val=0.3, by="group", seed=0)
    save_annotations(dataset)
    shutil.copyfile(src / "LICENSE", dst / "LICENSE")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
