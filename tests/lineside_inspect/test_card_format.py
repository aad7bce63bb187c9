"""A card from a newer Lineside is refused by its format, saying to upgrade, rather than
by the names of the fields this version does not know."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lineside_inspect.errors import PackageError
from lineside_inspect.package import CARD_FORMAT, load_package

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"


def _package(tmp_path: Path, **fields: object) -> Path:
    pkg = tmp_path / "deeppcb" / "1"
    shutil.copytree(BUNDLED, pkg)
    card = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**card, **fields}))
    return pkg


def test_the_bundled_card_is_this_versions_format() -> None:
    assert load_package(BUNDLED).card.format_version == CARD_FORMAT


def test_a_newer_card_is_refused_by_its_format(tmp_path: Path) -> None:
    pkg = _package(tmp_path, format_version=CARD_FORMAT + 1, verdict_rule="some new field")
    with pytest.raises(PackageError) as err:
        load_package(pkg)
    message = err.value.message
    assert f"format_version {CARD_FORMAT + 1} is newer than this Lineside reads" in message
    assert "upgrade lineside" in message and "verdict_rule" not in message


@pytest.mark.parametrize("version", [0, -1, "2", True])
def test_a_format_that_is_not_a_version_is_refused(tmp_path: Path, version: object) -> None:
    with pytest.raises(PackageError, match="format_version"):
        load_package(_package(tmp_path, format_version=version))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, -0.1])
def test_a_threshold_that_is_not_a_score_is_refused(tmp_path: Path, value: float) -> None:
    """A NaN threshold never counted its class's defects, silently (attacker review)."""
    card = json.loads((BUNDLED / "model.json").read_text())
    with pytest.raises(PackageError, match=r"thresholds\.open"):
        load_package(_package(tmp_path, thresholds={**card["thresholds"], "open": value}))


def test_an_unknown_field_in_this_format_is_still_named(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="verdict_rule"):
        load_package(_package(tmp_path, verdict_rule="typo"))


def test_a_version_is_at_most_64_characters(tmp_path: Path) -> None:
    """Every inspection stores its model's version in a 64-character column (the box's
    store and the fleet hub's): a 74-character version loaded, and the hub refused every
    forward from then on."""
    assert load_package(_package(tmp_path / "a", version="v" * 64)).card.version == "v" * 64
    with pytest.raises(PackageError, match="version: String should have at most 64 characters"):
        load_package(_package(tmp_path / "b", version="v" * 65))


@pytest.mark.parametrize(("fields", "field"), [
    ({"class_names": [f"c{i}" for i in range(1001)]}, "class_names"),
    ({"class_names": ["open", "x" * 129]}, "class_names.1"),
    ({"max_detections": 5001}, "max_detections"),
    ({"max_detections": 0}, "max_detections"),
])
def test_a_card_past_what_the_fleet_hub_takes_does_not_load(tmp_path: Path, fields: dict[str, object],
                                                             field: str) -> None:
    """The hub bounds a record's classes, class names and boxes; a card past them loaded on
    a box, and its every record was refused at the hub, holding up all later ones."""
    with pytest.raises(PackageError, match=field.replace(".", r"\.")):
        load_package(_package(tmp_path, **fields))


def test_a_card_that_is_not_a_readable_json_file_is_named(tmp_path: Path) -> None:
    """A folder named model.json, bytes that are not UTF-8, and JSON nested past the
    parser's stack each raised out of load_package (a 500 from the hub's publish; fleet
    review, session 32)."""
    pkg = _package(tmp_path)
    card = pkg / "model.json"
    for content, words in ((b"\xff\xfe{}", "not UTF-8 text"), (b"[" * 100_000, "nested too deeply"),
                           (b" " * (1 << 20) + b"{}", "over 1048576 bytes")):
        card.write_bytes(content)
        with pytest.raises(PackageError, match=words):
            load_package(pkg)
    card.unlink()
    card.mkdir()
    with pytest.raises(PackageError, match=r"model\.json: cannot be read"):
        load_package(pkg)
