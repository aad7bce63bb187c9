"""The model package contract: ``model.onnx`` + ``model.json`` (the model card).

The runtime refuses any package whose card does not match its graph: a sha256
mismatch, inputs/outputs or class count that disagree with the card, or external
tensor data that points outside the package folder. An external data file's name (the
graph's ``location``) becomes a path wherever the package is read or copied (the runtime,
``export --triton``), so it is full-matched as an archive member is (``names.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lineside_inspect.errors import PackageError, PathNotAllowedError, describe_validation
from lineside_inspect.names import (
    BIDI_RE,
    CONTROL_RE,
    MAX_CLASS_NAME,
    MAX_CLASSES,
    Name,
    is_package_member,
)
from lineside_inspect.schemas import Precision

CARD = "model.json"
GRAPH = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")
ANOMALY_OUTPUTS = ("anomaly_map", "score")  # a good-only model: per-pixel map, image score
ANOMALY_LABEL = "anomaly"  # the one class of a good-only model, and its regions' label
META_CLASSES = "lineside.class_names"


PAD_VALUE = 114  # the letterbox border's grey level, unless a card says otherwise
# the largest square input a card may ask for: every frame is letterboxed into 3 x S x S
# bytes before the graph sees it, and the warm-up makes one at load. A card of 100000
# asked for 28 GiB there (a MemoryError, a 500 from POST /v1/models); 4096 is 48 MiB
MAX_INPUT_SIZE = 4096


class LetterboxSpec(BaseModel):
    """How the image is fitted into the square input; training pads with the same value."""

    model_config = ConfigDict(extra="forbid")
    pad_value: int = Field(PAD_VALUE, ge=0, le=255, description="grey level of the border")
    center: Literal[True] = Field(True, description="the image sits in the middle (the only "
                                                    "placement the runtime makes)")


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = INPUT_NAME
    size: int = Field(..., gt=0, le=MAX_INPUT_SIZE,
                      description="square side the runtime letterboxes to")
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["uint8"] = "uint8"
    color: Literal["RGB", "grey+reference+difference"] = Field("RGB", description=(
        "RGB: one image; grey+reference+difference: a reference model, fed the frame and a "
        "golden reference of the same view (lineside_inspect.runtime.reference)"))
    letterbox: LetterboxSpec = Field(default_factory=LetterboxSpec)


class ParentModel(BaseModel):
    """The package a model was trained from (fine-tuned, or retrained on its reviews)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    sha256: str = Field(..., description="of the parent's graph")


class Lineage(BaseModel):
    """Where a model came from: what it was trained on and from which model."""

    model_config = ConfigDict(extra="forbid")
    dataset_revision: str | None = Field(None, description=(
        "sha256 over the training datasets' labels and image bytes "
        "(lineside_inspect.lifecycle.lineage); None when they were not readable at export"))
    datasets: list[str] = Field(default_factory=list, description="the training datasets, as named")
    parent: ParentModel | None = Field(None, description="None: trained from scratch")
    note: str = ""


class AnomalySpec(BaseModel):
    """How a good-only model's outputs become a verdict and boxes, calibrated on good images."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    threshold: float = Field(..., ge=0, le=1, description="image score at or above which a part fails")
    map_threshold: float = Field(..., ge=0, le=1, description=(
        "anomaly-map value above which pixels form regions (the reported boxes)"))
    min_region_px: int = Field(1, ge=1, description="smallest region reported, in map pixels")
    target_false_reject: float | None = Field(None, ge=0, le=1, description=(
        "the false-reject rate the threshold was calibrated for"))
    calibrated_on: int | None = Field(None, ge=0, description="good images the calibration saw")


def card_digest(card: ModelCard) -> str:
    """sha256 of the whole card but its ``created_at`` (a card without one gets the load
    time): graph sha256, thresholds, default recipe, ... A gate report admits this card,
    not the same graph re-calibrated (``lineside calibrate --write``)."""
    # a field added later must not change the digest of every card without it (gate
    # reports, admissions and a box's pulled models are keyed by it, and an upgraded box
    # found its pulled models "changed since pulled")
    exclude = {"created_at"} | _left_out(card)
    return hashlib.sha256(card.model_dump_json(exclude=exclude).encode()).hexdigest()


def _left_out(card: ModelCard) -> set[str]:
    """Fields added after cards were first written, left out of the card's file and digest
    when empty: ``external_data`` (a card naming it is refused by earlier releases)."""
    return set() if card.external_data else {"external_data"}


def version_clash(versions: Mapping[str, ModelCard], card: ModelCard, *,
                  placed: str) -> str | None:
    """Why ``card`` cannot stand beside ``versions`` (its model's other versions, by
    version, ``placed`` = "configured" or "loaded"), or None: a model name keeps its kind
    (the recipes naming it were checked against it), a version name its graph and card
    (what judges under it, its gate report and history would change unseen). One check for
    the registry's loads and the start-up's preflight, which must refuse alike."""
    kinds = {c.kind for c in versions.values()} - {card.kind}
    if kinds:
        return (f"model {card.name} {card.version} is of kind {card.kind}, its {placed} "
                f"versions of kind {kinds.pop()}: a model name keeps its kind")
    same = versions.get(card.version)
    if same is not None and card_digest(same) != card_digest(card):
        return (f"model {card.name} {card.version} is {placed} already with another graph "
                "or card: give the changed package a new version")
    return None


# the newest model.json format this version reads. A field that changes verdicts (as
# agnostic_iou did) bumps it, so an older server refuses a newer card by its format, with
# "upgrade", rather than by an unknown field's name. A card is written in the oldest
# format that holds what it carries: a card without those fields stays format 1, read by
# every release, byte for byte as before
CARD_FORMAT = 2
# the format a card whose default_recipe sets ``tiling`` has (session 44): a release before
# it judged such a package's frames whole, or refused its recipe by the field's name
TILING_FORMAT = 2
MAX_VERSION_CHARS = 64  # a card's version (see ModelCard.version)
MAX_DETECTIONS = 5_000  # a card's max_detections (a fused recipe reports up to twice)


class ModelCard(BaseModel):
    """``model.json``: what the model is, how to feed it, how far to trust it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    format_version: int = Field(1, ge=1, le=CARD_FORMAT, strict=True, description=(
        "the oldest Lineside card format holding every field this card carries: 2 for a "
        "default_recipe with tiling, else 1"))
    kind: Literal["detector", "anomaly"] = Field("detector", description=(
        "detector: boxes, scores, labels; anomaly: a good-only model's anomaly map and image "
        "score (outputs anomaly_map, score; an anomaly section)"))
    name: Name
    # 64, not a name's 128: every inspection stores it (the store's and the fleet hub's
    # column), and a longer one stopped a box's forwarding for good at the hub
    version: Name = Field(max_length=MAX_VERSION_CHARS)
    # bounded as the fleet hub bounds the records it takes (fleet/hub/ingest.py): a card
    # past them loaded, and its every record was refused at the hub, for good
    class_names: list[Annotated[str, Field(min_length=1, max_length=MAX_CLASS_NAME)]] = Field(
        ..., min_length=1, max_length=MAX_CLASSES)
    input: InputSpec
    outputs: list[str] = Field(default_factory=lambda: list(OUTPUT_NAMES))
    max_detections: int = Field(100, ge=1, le=MAX_DETECTIONS)
    precision: Precision = "fp32"
    # scores are 0..1; a NaN threshold never counted its class, silently (attacker review)
    thresholds: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = Field(
        default_factory=dict)
    agnostic_iou: float | None = Field(None, gt=0, lt=1, description=(
        "one defect per place: of counted boxes overlapping by IoU above this, only the "
        "highest-scored is counted, whatever the classes (in a recipe, only a box that "
        "fails the part on its own hides another); calibrated with the thresholds. None: "
        "every class's boxes count"))
    default_recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    lineage: Lineage | None = Field(None, description="dataset revision and parent model")
    anomaly: AnomalySpec | None = Field(None, description="kind anomaly: its calibrated thresholds")
    sha256: str
    external_data: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=dict, description=(
            "sha256 of each file the graph keeps tensors in (its external data), by the "
            "name the graph gives; sha256 covers model.onnx only, and the weights in those "
            "files loaded unchecked"))
    lineside_version: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @model_validator(mode="before")
    @classmethod
    def _known_format(cls, doc: Any) -> Any:
        """A newer card is refused by its format alone: its other errors would only be the
        fields this version does not know."""
        version = doc.get("format_version") if isinstance(doc, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > CARD_FORMAT:
            raise ValueError(f"format_version {version} is newer than this Lineside reads "
                             f"({CARD_FORMAT}): upgrade lineside to use this package")
        return doc

    @model_validator(mode="after")
    def _format_holds_fields(self) -> ModelCard:
        """A card whose own recipe tiles says so by its format: a release before tiling
        then refuses it as newer, saying to upgrade, instead of by the field's name."""
        if "tiling" in self.default_recipe and self.format_version < TILING_FORMAT:
            raise ValueError(f"default_recipe names tiling, which takes format_version "
                             f"{TILING_FORMAT} (the card says {self.format_version})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _anomaly_outputs(cls, doc: Any) -> Any:
        """An anomaly card that lists no outputs has the anomaly ones, not a detector's."""
        if isinstance(doc, dict) and doc.get("kind") == "anomaly" and "outputs" not in doc:
            return {**doc, "outputs": list(ANOMALY_OUTPUTS)}
        return doc

    @model_validator(mode="after")
    def _kind_fits(self) -> ModelCard:
        if self.kind == "detector":
            if self.anomaly is not None:
                raise ValueError("an anomaly section needs kind 'anomaly'")
            return self
        if self.anomaly is None:
            raise ValueError("kind 'anomaly' needs an anomaly section (threshold, map_threshold, "
                             "min_region_px)")
        if self.outputs != list(ANOMALY_OUTPUTS):
            raise ValueError(f"kind 'anomaly' has outputs {list(ANOMALY_OUTPUTS)}, card lists "
                             f"{self.outputs}")
        if self.class_names != [ANOMALY_LABEL]:
            raise ValueError(f"kind 'anomaly' has class_names [{ANOMALY_LABEL!r}], card lists "
                             f"{self.class_names}")
        if self.input.color != "RGB":
            raise ValueError("kind 'anomaly' takes one RGB image (input.color 'RGB')")
        return self

    @model_validator(mode="after")
    def _plain_class_names(self) -> ModelCard:
        # class names are shown on pages, written to CSVs, logs and the store: a NUL was
        # refused by PostgreSQL at every inspection's write, a newline or U+202E garbled
        # the lines they are shown on, and two classes of one name shared its threshold
        for i, c in enumerate(self.class_names):
            if CONTROL_RE.search(c) or BIDI_RE.search(c):
                raise ValueError(f"class_names.{i} {c[:64]!r} holds a control or "
                                 "bidirectional character (NUL, LF, U+202E, ...)")
        twice = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
        if twice:
            raise ValueError(f"class_names lists {', '.join(repr(c[:64]) for c in twice[:5])} "
                             "more than once")
        return self

    @model_validator(mode="after")
    def _thresholds_name_classes(self) -> ModelCard:
        # a typo ("pinhole" for "pin-hole") loaded, and the class was judged at the
        # default 0.5 (lifecycle review, session 32)
        unknown = [k for k in self.thresholds if k not in self.class_names]
        if unknown:
            raise ValueError(f"thresholds name {', '.join(repr(k[:64]) for k in unknown[:5])}, "
                             f"not a class of this model ({', '.join(self.class_names)})")
        return self

    @property
    def needs_reference(self) -> bool:
        """A reference model: each frame must come with a reference image."""
        return self.input.color != "RGB"

    def threshold(self, label: str, default: float = 0.5) -> float:
        return self.thresholds.get(label, default)


def default_recipe_name(model: str) -> str:
    """The recipe a model's card brings, used when the server has no recipe configured."""
    return f"{model}-default"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_stream(fh: IO[bytes]) -> str:
    """The sha256 of what ``fh`` holds from here on, read a MiB at a time."""
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelPackage:
    """A verified package on disk. ``graph`` and ``external`` (external data files, by
    name): the bytes that were verified, for the runtime to load (the folder read again
    could hold others by then); None and empty when the package was not read here."""

    path: Path
    card: ModelCard
    graph: bytes | None = field(default=None, repr=False, compare=False)
    external: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def graph_path(self) -> Path:
        return self.path / GRAPH

    @property
    def ref(self) -> str:
        return f"{self.card.name}:{self.card.version}"


# a card is a few KB (thresholds, metrics, notes); read whole, so bounded
MAX_CARD_BYTES = 1 << 20
MAX_GRAPH_BYTES = 2 << 30  # protobuf's own bound on one message (an ONNX graph)
MAX_EXTERNAL_BYTES = 4 << 30  # a package's external data in all (the fleet unpacks as much)


def read_member(path: Path, name: str, limit: int) -> bytes:
    """The bytes of file ``name`` of the package folder ``path``, read once: a regular
    file inside the folder (a link may point within it), at most ``limit`` bytes. A
    link out of the folder made the checks read a file of the placer's choosing (its
    sha256 named in the refusal), a FIFO waited for ever, a link to /dev/zero was hashed
    for ever. FileNotFoundError when there is none."""
    member = path / name
    try:
        real = member.resolve()
        if not real.is_relative_to(path.resolve()):
            raise PackageError(f"{member}: links out of the package folder: a package's "
                               "files are inside it")
        # the resolved path, not followed again (a link put in its place meanwhile); a FIFO
        # opens at once and is refused below
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:  # no permission, a link loop, a name too long
        raise PackageError(f"{member}: cannot be read ({exc.strerror or type(exc).__name__})"
                           ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise PackageError(f"{member}: cannot be read (not a regular file: a folder, FIFO "
                           "or device)")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1) if info.st_size <= limit else b""
    if len(data) > limit or info.st_size > limit:
        raise PackageError(f"{member}: over {limit} bytes, the most a package's file may hold")
    return data


def read_card(path: Path) -> ModelCard:
    card_path = path / CARD
    try:
        raw = read_member(path, CARD, MAX_CARD_BYTES)
    except FileNotFoundError:
        raise PackageError(f"{path}: not a model package (no {CARD})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PackageError(f"{card_path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PackageError(f"{card_path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:  # [[[[... deeper than the parser's stack
        raise PackageError(f"{card_path}: invalid JSON: nested too deeply") from None
    except ValueError:  # int()'s limit: a number of more than 4300 digits, a traceback
        raise PackageError(f"{card_path}: invalid JSON: a number too long to read") from None
    try:
        return ModelCard.model_validate(doc)
    except ValidationError as exc:
        fields = describe_validation(exc.errors())
        raise PackageError(f"{card_path}: {fields}") from None


def _check_graph(path: Path, card: ModelCard, data: bytes) -> dict[str, bytes]:
    """Check the graph ``data`` (model.onnx as hashed) against ``card``; the external data
    files it names, read and checked against the card's ``external_data``."""
    graph_path = path / GRAPH
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others for junk
        raise PackageError(f"{graph_path}: unreadable ONNX graph ({type(exc).__name__})") from None
    root = path.resolve()
    locations: list[str] = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            # full-matched first ('/'-separated names, no '..', no NUL): resolving alone let
            # 'link/../../x' through (a link inside the package made it resolve inside),
            # which export --triton then copied to outside its repository, and a NUL was a
            # ValueError (a 500 from POST /v1/models and the hub's publish)
            if not is_package_member(location) \
                    or not (root / location).resolve().is_relative_to(root):
                raise PackageError(
                    f"{graph_path}: tensor {tensor.name!r} points at external data "
                    f"{location[:80]!r} outside the package folder or not by a plain "
                    "relative name ('/'-separated letters, digits, '_', '-', '.'; no '..')"
                )
            if location not in locations:
                locations.append(location)
    external = _read_external(path, card, locations)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != card.input.name:
        names = [i.name for i in inputs]
        raise PackageError(f"{graph_path}: graph inputs {names} do not match card input "
                           f"{card.input.name!r}")
    tt = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
    if tt.elem_type != onnx.TensorProto.UINT8 or dims[1:] != [3, card.input.size, card.input.size]:
        raise PackageError(
            f"{graph_path}: input is {onnx.TensorProto.DataType.Name(tt.elem_type)} {dims}, "
            f"card says uint8 [batch, 3, {card.input.size}, {card.input.size}]"
        )
    outputs = [o.name for o in model.graph.output]
    if outputs != card.outputs:
        raise PackageError(f"{graph_path}: outputs {outputs} do not match card {card.outputs}")
    # the card's precision is what /v1/models and gate reports say: an int8 graph under a
    # card saying fp32 loaded and was reported fp32 (lifecycle review, session 32)
    quantized = any(n.op_type in _QUANT_OPS for n in model.graph.node)
    if (card.precision == "int8") != quantized:
        raise PackageError(f"{graph_path}: the card says precision {card.precision}, and the "
                           f"graph is {'' if quantized else 'not '}quantized (int8)")
    meta = {p.key: p.value for p in model.metadata_props}
    if card.kind == "anomaly":
        _check_anomaly_outputs(graph_path, model, card.input.size)
        if META_CLASSES not in meta:  # its one class is fixed: the metadata adds nothing
            return external
    if META_CLASSES not in meta:
        raise PackageError(f"{graph_path}: graph carries no {META_CLASSES} metadata")
    graph_classes = _graph_classes(graph_path, meta[META_CLASSES])
    if graph_classes != card.class_names:
        raise PackageError(
            f"{graph_path}: graph was exported for {len(graph_classes)} classes "
            f"{_listed(graph_classes)}, card lists {len(card.class_names)} "
            f"{_listed(card.class_names)}"
        )
    return external


def _graph_classes(graph_path: Path, raw: str) -> list[str]:
    """The graph's ``lineside.class_names`` metadata: a JSON list of strings. Read with
    ``json.loads`` unchecked, junk there ('not json', '5', '[[[...', a 5000-digit number)
    was a JSONDecodeError, TypeError, RecursionError or ValueError: a 500 from POST
    /v1/models and a traceback from the CLI (attacker review, session 51)."""
    why = f"{graph_path}: graph's {META_CLASSES} metadata is not a JSON list of class names"
    try:
        classes = json.loads(raw)
    except RecursionError:
        raise PackageError(f"{why} (nested too deeply)") from None
    except ValueError:  # JSONDecodeError, or int()'s limit on a number's digits
        raise PackageError(f"{why} (invalid JSON)") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise PackageError(f"{why} (it holds {type(classes).__name__} "
                           f"{_listed(classes)})")
    return classes


def _listed(value: Any, limit: int = 200) -> str:
    """``value`` as shown in a refusal, cut to ``limit`` characters: a graph's metadata is
    up to the graph's 2 GiB, and was echoed whole in the 422."""
    text = repr(value) if not isinstance(value, list) else json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _read_external(path: Path, card: ModelCard, locations: list[str]) -> dict[str, bytes]:
    """The external data files ``locations``, each read once and checked against the
    card's ``external_data`` sha256 (which must name exactly these files)."""
    graph_path = path / GRAPH
    unused = sorted(set(card.external_data) - set(locations))
    if unused:
        raise PackageError(f"{path / CARD}: external_data names {unused[0][:80]!r}, which the "
                           "graph keeps no tensor in")
    external: dict[str, bytes] = {}
    left = MAX_EXTERNAL_BYTES
    for location in locations:
        want = card.external_data.get(location)
        if want is None:
            raise PackageError(
                f"{graph_path}: external data file {location[:80]!r} has no sha256 in the "
                "card's external_data: the card's sha256 covers model.onnx only")
        try:
            data = read_member(path, location, left)
        except FileNotFoundError:
            raise PackageError(f"{graph_path}: external data file {location[:80]!r} is not in "
                               "the package") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != want:
            raise PackageError(
                f"{path / location}: sha256 {digest[:12]}… does not match the card's "
                f"external_data {want[:12]}…; the file was altered or belongs to another model")
        external[location] = data
        left -= len(data)
    return external


_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
              "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def _check_anomaly_outputs(graph_path: Path, model: onnx.ModelProto, size: int) -> None:
    """float32 ``anomaly_map [N, 1, S, S]`` and ``score [N]`` (symbolic dims allowed)."""
    want = {"anomaly_map": [1, size, size], "score": []}
    for out in model.graph.output:
        tt = out.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        expected = want[out.name]
        fits = (tt.elem_type == onnx.TensorProto.FLOAT and len(dims) == len(expected) + 1
                and all(d is None or d == e for d, e in zip(dims[1:], expected, strict=True)))
        if not fits:
            shape = ["N", *expected]
            raise PackageError(
                f"{graph_path}: output {out.name!r} is "
                f"{onnx.TensorProto.DataType.Name(tt.elem_type)} {dims}, an anomaly model's is "
                f"float32 {shape}")


def confine(value: str, roots: list[Path]) -> Path:
    """Package folder ``value`` resolved (symlinks followed), if it and the package files
    in it lie inside one of ``roots`` (a server's ``model_roots``: ``POST /v1/models``, and
    the packages it kept across a restart, ``lifecycle/kept.py``); else
    :class:`PathNotAllowedError` naming the rule and the caller's own path, never the
    server's folders."""
    if "\x00" in value:
        raise PathNotAllowedError("model path contains a NUL byte: not a folder inside model_roots")
    path = Path(value).resolve()
    inside = [r for r in roots if path.is_relative_to(r)]
    if inside:
        root = inside[0]
        if all((path / f).resolve().is_relative_to(root) for f in (CARD, GRAPH)):
            return path
    relative = "" if Path(value).is_absolute() else (
        "; a relative path is taken from the folder the server was started in: give the "
        "package's absolute path")
    raise PathNotAllowedError(
        f"model path {value!r} is outside the server's model_roots: packages load only from "
        f"the folders that setting names (by default the one holding the configured models)"
        f"{relative}")


def load_package(path: str | Path) -> ModelPackage:
    """Read and verify a package: card schema, sha256 of the graph, graph vs card."""
    path = Path(path)
    try:
        found = path.is_dir()
    except OSError as exc:  # a name too long (ENAMETOOLONG): a 500 from POST /v1/models
        raise PackageError(f"{path}: model package folder cannot be read "
                           f"({exc.strerror or type(exc).__name__})") from None
    if not found:
        raise PackageError(f"{path}: model package folder not found")
    card = read_card(path)
    graph = path / GRAPH
    try:
        # read once: hashed, checked and handed to the runtime as these bytes. Hashed on
        # one read and loaded from another, a graph swapped in between served unchecked
        data = read_member(path, GRAPH, MAX_GRAPH_BYTES)
    except FileNotFoundError:
        raise PackageError(f"{path}: model package has no {GRAPH}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.sha256:
        raise PackageError(
            f"{graph}: sha256 {digest[:12]}… does not match the card's {card.sha256[:12]}…; "
            "the graph was altered or the card belongs to another model"
        )
    external = _check_graph(path, card, data)
    return ModelPackage(path, card, data, external)


def card_json(card: ModelCard) -> str:
    """``card`` as model.json holds it. ``external_data`` only when the graph has external
    data: a card that names it is refused by releases before it (extra fields are
    forbidden), and a package a box of such a release pulls from the fleet was refused
    for an empty field it never needed."""
    return card.model_dump_json(indent=1, exclude=_left_out(card) or None) + "\n"


def write_card(path: Path, card: ModelCard) -> None:
    (path / CARD).write_text(card_json(card))
