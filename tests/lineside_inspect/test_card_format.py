"""A card from a newer Lineside is refused by its format, saying to upgrade, rather than
by the names of the fields this version does not know."""

from __future__ import annotations

import json
import re
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


def test_the_bundled_card_is_the_oldest_format() -> None:
    """A card is written in the oldest format holding its fields (format 2 for a recipe
    that tiles): the bundled ones are read by every release."""
    assert load_package(BUNDLED).card.format_version == 1 < CARD_FORMAT


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
    """A folder named model.json, bytes that are not UTF-8, JSON nested past the parser's
    stack and a number past int()'s 4300 digits each raised out of load_package (a 500
    from the hub's publish; fleet review, session 32)."""
    pkg = _package(tmp_path)
    card = pkg / "model.json"
    for content, words in ((b"\xff\xfe{}", "not UTF-8 text"), (b"[" * 100_000, "nested too deeply"),
                           (b" " * (1 << 20) + b"{}", "over 1048576 bytes"),
                           (b'{"v": ' + b"9" * 5000 + b"}", "a number too long to read")):
        card.write_bytes(content)
        with pytest.raises(PackageError, match=words):
            load_package(pkg)
    card.unlink()
    card.mkdir()
    with pytest.raises(PackageError, match=r"model\.json: cannot be read"):
        load_package(pkg)


def test_thresholds_must_name_the_models_classes(tmp_path: Path) -> None:
    """A typo ("pinhole" for "pin-hole") loaded, and the class was judged at the default
    0.5 (lifecycle review, session 32)."""
    with pytest.raises(PackageError, match="thresholds name 'pinhole', not a class of this model"):
        load_package(_package(tmp_path, thresholds={"pinhole": 0.4}))


def _constant_graph(path: Path, labels: list[list[int]], scores: list[list[float]]) -> None:
    """A graph with the card's input and output names that answers constants."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))

    n = len(scores[0])
    graph = helper.make_graph(
        [const("boxes", np.zeros((1, n, 4), np.float32)),
         const("scores", np.array(scores, np.float32)),
         const("labels", np.array(labels, np.int64))],
        "constant", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bundled = onnx.load(str(BUNDLED / "model.onnx"), load_external_data=False)
    helper.set_model_props(model, {p.key: p.value for p in bundled.metadata_props})
    onnx.save(model, path)


@pytest.mark.parametrize(("labels", "scores", "words"), [
    ([[99]], [[0.9]], "class ids 99..99, the card names 6 classes"),
    ([[-1]], [[0.9]], "class ids -1..-1"),
    ([[0]], [[7.0]], "scores are not all in 0..1")])
def test_a_graph_whose_outputs_break_its_card_is_refused_at_load(
        tmp_path: Path, labels: list[list[int]], scores: list[list[float]], words: str) -> None:
    """The right output names with nonsense in them loaded (200), failed its gate with a
    500 and, forced active, made every inspection a 500 (lifecycle review, session 32)."""
    from lineside_inspect.package import sha256_file
    from lineside_inspect.runtime.detector import Detector

    pkg = _package(tmp_path)
    _constant_graph(pkg / "model.onnx", labels, scores)
    card = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**card, "sha256": sha256_file(pkg / "model.onnx")}))
    with pytest.raises(PackageError, match=re.escape(words)):
        Detector(pkg, device="cpu", threads=1)


@pytest.mark.parametrize(("recipe", "words"), [
    ({"min_score": {"scratch": 0.1}}, "min_score names unknown class 'scratch'"),
    ({"min_score": {"open": float("nan")}}, "min_score.open"),
    ({"max_count": {"open": "lots"}}, "max_count.open"),
    ({"model": "other"}, "judges model other, not deeppcb")])
def test_a_card_whose_own_recipe_does_not_fit_is_refused_at_load(
        tmp_path: Path, recipe: dict[str, object], words: str) -> None:
    """Its gate was a 500, a server start a traceback, and a swap to it left the line at
    the old version's floors (lifecycle review, session 32)."""
    from lineside_inspect.server.registry import Registry

    pkg = _package(tmp_path, default_recipe=recipe)
    with pytest.raises(PackageError, match=re.escape(words)) as exc:
        Registry(device="cpu", threads=1).load(pkg)
    assert exc.value.message.startswith("model deeppcb 1: its card's default_recipe")


def test_the_cards_precision_is_the_graphs(tmp_path: Path) -> None:
    """An int8 graph under a card saying fp32 loaded and was reported fp32 by /v1/models
    and gate reports (lifecycle review, session 32); and the other way round."""
    with pytest.raises(PackageError, match="the card says precision int8, and the graph is "
                                           "not quantized"):
        load_package(_package(tmp_path / "a", precision="int8"))
    pkg = tmp_path / "b" / "deeppcb" / "1-int8"
    shutil.copytree(BUNDLED.parent / "1-int8", pkg)
    card = json.loads((pkg / "model.json").read_text())
    (pkg / "model.json").write_text(json.dumps({**card, "precision": "fp32"}))
    with pytest.raises(PackageError, match="the card says precision fp32, and the graph is "
                                           "quantized"):
        load_package(pkg)


# card_digest of the bundled cards as the release before external_data computed it (a5ec894)
EARLIER_DIGESTS = {
    "deeppcb/1": "1e1a6c232456d3e2d654c2a3f0fed9d6803a22cdbe6aa5c427abc5cc06da0279",
    "deeppcb-ref/1": "f09f41273e078fd82919359234ff982cf3ad70582e1d9faeed0a5abb3470c911",
    "deeppcb-good/1": "ea279841c914e2e131067af3030112785fd26a6741ddcf3c65df17a5b174a813",
}


def test_a_card_without_external_data_keeps_its_earlier_digest() -> None:
    """The card's new ``external_data`` field went into every card's digest: gate reports,
    admissions and a box's pulled models are keyed by it, and an upgraded box refused its
    pulled models at start ("the card changed since it was pulled")."""
    from lineside_inspect.package import card_digest

    models = BUNDLED.parents[1]
    for name, digest in EARLIER_DIGESTS.items():
        assert card_digest(load_package(models / name).card) == digest, name


def test_a_card_is_written_without_an_external_data_it_does_not_have(tmp_path: Path) -> None:
    """A card naming an empty ``external_data`` is refused by every release before the
    field (extra fields are forbidden): a box of one pulling a newly exported package from
    the fleet refused it. Written only when the graph has external data."""
    from lineside_inspect.package import write_card

    card = load_package(BUNDLED).card
    write_card(tmp_path, card)
    assert "external_data" not in json.loads((tmp_path / "model.json").read_text())
    write_card(tmp_path, card.model_copy(update={"external_data": {"w.bin": "0" * 64}}))
    assert json.loads((tmp_path / "model.json").read_text())["external_data"] == {"w.bin": "0" * 64}
