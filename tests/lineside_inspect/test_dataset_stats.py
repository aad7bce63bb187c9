"""``lineside data stats`` on the sample: counts recounted from its annotations file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from lineside_inspect.cli import app

runner = CliRunner()


def test_stats_match_the_annotations(sample: Path, tmp_path: Path) -> None:
    doc = json.loads((sample / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    split_of = {i["id"]: i["split"] for i in doc["images"]}
    expected = Counter((split_of[a["image_id"]], names[a["category_id"]]) for a in doc["annotations"])
    result = runner.invoke(app, ["data", "stats", str(sample), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.output)
    assert s["images"] == 70 and s["groups"] == 7 and s["with_reference"] == 35
    got = Counter({(sp, c): n for sp, row in s["boxes_per_class"].items() for c, n in row.items() if n})
    assert got == expected
    assert sum(sum(v.values()) for v in s["images_per_split"].values()) == 70
    assert sum(s["box_size_histogram"].values()) == len(doc["annotations"])
    plot = tmp_path / "stats.png"
    result = runner.invoke(app, ["data", "stats", str(sample), "--plot", str(plot)])
    assert result.exit_code == 0 and "35 with a reference" in result.output
    assert plot.read_bytes().startswith(b"\x89PNG")
