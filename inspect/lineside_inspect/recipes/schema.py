"""Recipes: the pass/fail rules for one product (SKU), versioned, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lineside_inspect.errors import ConfigError, describe_validation
from lineside_inspect.names import Name, OneLine
from lineside_inspect.runtime.tiles import Tiling
from lineside_inspect.runtime.unchanged import UnchangedGate
from lineside_inspect.user_files import load_yaml, read_text

# pixels; bounded so that no sum over a polygon overflows to inf (a region of +-1e308
# made every centre fall outside it, passing any board)
COORD_LIMIT = 1e6
# numbers are strict: true is not 1, "0.5" is not a score (an int is a float, as YAML's
# ``floor: 15`` or ``sample_rate: 1``; a float is never an int)
Coord = Annotated[float, Field(ge=-COORD_LIMIT, le=COORD_LIMIT, strict=True)]
Polygon = list[tuple[Coord, Coord]]
# polygons in a recipe's roi, and in its ignore: each is drawn on a good-only model's map
# for every image size a camera sends (a few ms for one the size of the map); a 64 KB
# body held thousands, seconds of an inspection for each new size
MAX_POLYGONS = 64
Size = Annotated[float, Field(ge=0, le=COORD_LIMIT, strict=True)]
Score = Annotated[float, Field(ge=0, le=1, strict=True)]
# defects of a class a part may have: more than any model finds in one image is no limit
# (a count beyond 64 bits was taken, and true was 1)
MAX_COUNT = 1_000_000
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]

# the remote endpoint's names become URL path segments: full-matched, no '/', '?' or '%'
ENDPOINT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"


class RemoteModel(BaseModel):
    """Where a recipe's inference runs when not on the box: an Open Inference Protocol
    (KServe v2) endpoint such as Triton, KServe or another Lineside's ``/v2``. The box
    keeps pre- and post-processing (letterbox, reference pair, boxes back to pixels) and
    judges with the model card ``card`` names, so only the tensor goes out."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    url: str = Field(..., pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$", max_length=512,
                     description="the server's base URL; /v2/models/... is appended")
    model: str = Field(..., pattern=f"^{ENDPOINT_NAME}$",
                       description="the model's name on the endpoint")
    version: str | None = Field(None, pattern=f"^{ENDPOINT_NAME}$",
                                description="the model version on the endpoint; default its own")
    card: str = Field(..., min_length=1, max_length=4096, description=(
        "the model package folder (or its model.json) the endpoint serves: the card gives "
        "the input size, classes and thresholds; the graph need not be on the box"))
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", description=(
        "environment variable holding a bearer token for the endpoint (never in the recipe)"))
    timeout_s: float = Field(5.0, gt=0, le=60, strict=True,
                             description="per request, connect to last byte")


class AnomalyRule(BaseModel):
    """A good-only (anomaly) model's say in the verdict: the part fails when its image
    score reaches ``threshold``. Beside a detector (``model``: the anomaly package's name)
    the part fails on a counted defect OR the score; its regions that no counted defect
    covers are reported as ``anomaly``. On a recipe whose own model is the anomaly model,
    leave ``model`` out: the section only sets the threshold."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    model: Name | None = Field(None, description=(
        "anomaly package name (card kind anomaly) fused with the recipe's detector"))
    model_version: Name | None = Field(None, description="pin a version; default: the active one")
    threshold: Score | None = Field(None, description=(
        "image score at or above which the part fails; default: the card's calibrated one"))

    @model_validator(mode="after")
    def _pin_needs_model(self) -> AnomalyRule:
        # a good-only recipe's own version is its model_version: this one pinned nothing,
        # unseen, and the active version judged
        if self.model_version is not None and self.model is None:
            raise ValueError("model_version pins a version of anomaly.model, and there is "
                             "none (a good-only model alone: pin it with the recipe's own "
                             "model_version)")
        return self


def check_polygons(polygons: list[Polygon]) -> list[Polygon]:
    """A recipe's ``roi`` or ``ignore``: at most :data:`MAX_POLYGONS`, each enclosing an
    area (ValueError naming the one that does not)."""
    if len(polygons) > MAX_POLYGONS:
        raise ValueError(f"at most {MAX_POLYGONS} polygons, got {len(polygons)}")
    for i, p in enumerate(polygons):
        if len(p) < 3:
            raise ValueError(f"polygon {i} needs at least 3 points, got {len(p)}")
        # shoelace: points on one line (or all the same) enclose nothing
        area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(p, p[1:] + p[:1], strict=True))
        if area == 0:
            raise ValueError(f"polygon {i} encloses no area (its points are on one line)")
    return polygons


# a recipe's version: one line of at most 64 characters (a kept one read back is held to
# it too: recipes/saved.py ``judged``)
RecipeVersion = Annotated[OneLine, Field(min_length=1, max_length=64)]


class JudgedRegions(BaseModel):
    """Where one version of a recipe judges a frame: its ``roi`` and ``ignore`` polygons,
    held to a recipe's rules (a polygon of no point, read back from a file or a server,
    was a traceback of the pull's painting)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    roi: list[Polygon] = Field(default_factory=list, max_length=MAX_POLYGONS)
    ignore: list[Polygon] = Field(default_factory=list, max_length=MAX_POLYGONS)

    @field_validator("roi", "ignore")
    @classmethod
    def _polygons(cls, polygons: list[Polygon]) -> list[Polygon]:
        return check_polygons(polygons)


class RecipeRegions(BaseModel):
    """Where each known version of a recipe judges a frame (``GET
    /v1/recipes/{name}/regions``, a reviewer's): the one judging now (``version``; None
    when none of the name judges now) and the earlier ones kept beside their rules'
    digests (recipes/saved.py), one answer for a name. ``lineside data pull`` reads it to
    paint out what the recipe never judged (store/pull_regions.py): a detection there was
    never counted nor shown, so the area is no known background."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Name
    version: RecipeVersion | None
    versions: dict[RecipeVersion, JudgedRegions]


class Recipe(BaseModel):
    """Rules turning detections into a verdict.

    A defect counts when its score reaches the class's ``min_score`` (default: the model
    card's calibrated threshold), its longer side reaches the minimum size, and its centre
    lies inside a region of interest (if any) and outside every ignore region. The part
    fails when a ``critical`` class has any counted defect, or a class has more counted
    defects than ``max_count`` allows (0 unless given).

    Everything is checked on the way in, so a recipe that cannot work is refused when it
    is put, not discovered on the line: numbers are finite (a NaN in a region would make
    every point fall outside it, passing any board), regions are real polygons, a size in
    mm comes with its scale; classes are checked against the model's card when the recipe
    is added to a server (:meth:`check_classes`).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    name: Name
    version: RecipeVersion = "1"
    model: Name = Field(..., description="model package name (card name)")
    model_version: Name | None = Field(None, description="pin a version; default: the active one")
    min_score: dict[str, Score] = Field(default_factory=dict)
    default_min_score: Score | None = None
    min_size_px: Size = 0
    min_size_mm: Size | None = None
    pixels_per_mm: float | None = Field(None, gt=0, le=COORD_LIMIT, strict=True)
    roi: list[Polygon] = Field(default_factory=list)
    ignore: list[Polygon] = Field(default_factory=list)
    max_count: dict[str, Count] = Field(default_factory=dict)
    critical: list[str] = Field(default_factory=list)
    align_reference: bool = Field(False, strict=True, description=(
        "reference models: translate each frame onto its reference before comparing "
        "(for parts that sit a few pixels off; searched within 16 px)"))
    unchanged_gate: UnchangedGate | None = Field(None, description=(
        "reference models: pass a part that matches its reference everywhere without "
        "running the detector (runtime/unchanged.py; floor from lineside calibrate-unchanged)"))
    min_contrast: int | None = Field(None, ge=0, le=255, strict=True, description=(
        "grey levels (5th to 95th percentile) a frame, and on a reference station its golden "
        "image, must span; below it the part fails as blank_frame (a lens cap, a lamp off). "
        "Unset, a reference station fails a frame under 16 and under half its golden's "
        "where its golden spans 16 or more (a flat golden is the part's own look: its "
        "frames are not checked); "
        "single-image models check nothing; 0 turns it off"))
    anomaly: AnomalyRule | None = Field(None, description=(
        "a good-only model's image score as a rule (alone, or fused with the detector)"))
    # strict: true (YAML's yes) or "0.02" would pass for a rate
    usual_fail_rate: Annotated[float, Field(ge=0, le=1, strict=True)] | None = Field(None, description=(
        "the share of parts this product usually fails on this line, if known: the "
        "fail-rate alarm compares with it from the start instead of learning it from the "
        "first inspections (docs/lifecycle.md section 6)"))
    tiling: Tiling | None = Field(None, description=(
        "single-image detectors: cut a frame larger than tiling.tile px into overlapping "
        "tiles judged at native scale, their boxes joined back in frame pixels "
        "(runtime/tiles.py); a frame no larger than a tile is judged whole, as without it"))
    remote: RemoteModel | None = Field(None, description=(
        "run inference on an OIP v2 endpoint instead of a package loaded on the box; "
        "in recipe files of the server's config only (PUT /v1/recipes refuses it)"))

    @field_validator("roi", "ignore")
    @classmethod
    def _polygons(cls, polygons: list[Polygon]) -> list[Polygon]:
        return check_polygons(polygons)

    @field_validator("roi")
    @classmethod
    def _roi_in_frames(cls, polygons: list[Polygon]) -> list[Polygon]:
        # a frame's pixels are at x >= 0 and y >= 0: a region wholly left of or above the
        # image holds none, so no defect counted and every part passed (session 54)
        for i, p in enumerate(polygons):
            if max(x for x, _ in p) <= 0 or max(y for _, y in p) <= 0:
                raise ValueError(f"polygon {i} lies wholly left of or above the image (frame "
                                 "pixels are at x >= 0 and y >= 0): it holds no pixel of any "
                                 "frame, so no defect would count and every part would pass")
        return polygons

    @model_validator(mode="after")
    def _mm_needs_scale(self) -> Recipe:
        if self.min_size_mm is not None and self.pixels_per_mm is None:
            raise ValueError("min_size_mm needs pixels_per_mm (how many pixels make a millimetre)")
        return self

    @property
    def regions(self) -> JudgedRegions:
        """Where it judges a frame (its ``roi`` and ``ignore``)."""
        return JudgedRegions(roi=self.roi, ignore=self.ignore)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def min_size(self) -> float:
        """Minimum longer side in pixels (the mm rule converted with pixels_per_mm)."""
        if self.min_size_mm is not None:
            if self.pixels_per_mm is None:
                raise ConfigError(f"recipe {self.name}: min_size_mm needs pixels_per_mm")
            return max(self.min_size_px, self.min_size_mm * self.pixels_per_mm)
        return self.min_size_px

    def fused(self) -> tuple[str, str | None] | None:
        """(name, pinned version or None: the active one) of the good-only model this
        recipe fuses with its detector (``anomaly.model``), or None when it fuses none (a
        detector alone, or a good-only model serving alone)."""
        if self.anomaly is None or self.anomaly.model is None:
            return None
        return self.anomaly.model, self.anomaly.model_version

    def check_models(self, kind: str, class_names: list[str], anomaly_kind: str | None = None) -> None:
        """Refuse a recipe its models cannot serve: ``kind`` and ``class_names`` are its
        model's card's, ``anomaly_kind`` the kind of the model ``anomaly.model`` names."""
        fused = self.anomaly.model if self.anomaly is not None else None
        if self.tiling is not None and (kind == "anomaly" or fused is not None):
            what = (f"model {self.model} is a good-only (anomaly) model" if kind == "anomaly"
                    else f"it fuses good-only model {fused} with its detector")
            raise ConfigError(f"recipe {self.name}: tiling takes single-image detectors, and "
                              f"{what}, whose image score and map are of the whole frame")
        if kind == "anomaly":
            if fused is not None:
                raise ConfigError(f"recipe {self.name}: model {self.model} is itself an anomaly "
                                  "model: leave out anomaly.model (the section then only sets "
                                  "the threshold)")
            used = [f for f in ("min_score", "max_count", "critical") if getattr(self, f)]
            if used or self.default_min_score is not None:
                raise ConfigError(
                    f"recipe {self.name}: model {self.model} is an anomaly model, judged by its "
                    f"image score (anomaly: {{threshold: ...}}); "
                    f"{', '.join(used) or 'default_min_score'} apply to a detector's classes")
            return self.check_classes(class_names)
        if self.anomaly is not None and fused is None:
            raise ConfigError(f"recipe {self.name}: model {self.model} is a detector: anomaly "
                              "needs model: the anomaly package to fuse with it")
        if fused is not None and anomaly_kind != "anomaly":
            raise ConfigError(f"recipe {self.name}: anomaly.model {fused} is a {anomaly_kind}, "
                              "not an anomaly (good-only) model")
        self.check_classes(class_names)

    def check_reference_use(self, needs_reference: bool) -> None:
        """Refuse comparing frames with a golden image under a model that takes none
        (``needs_reference``: the model's card says it does)."""
        for used, what in ((self.unchanged_gate is not None, "unchanged_gate compares each "
                            "frame with"), (self.align_reference, "align_reference moves each "
                            "frame onto")):
            if used and not needs_reference:
                raise ConfigError(f"recipe {self.name}: {what} its reference, and model "
                                  f"{self.model} takes no reference")
        if self.tiling is not None and needs_reference:
            raise ConfigError(f"recipe {self.name}: tiling takes single-image detectors, and "
                              f"model {self.model} compares each frame with its reference "
                              "image (golden), a pair tiles would cut apart")

    def check_classes(self, class_names: list[str]) -> None:
        """Refuse rules naming classes the model does not know (a typo would silently pass)."""
        known = set(class_names)
        for field_name in ("min_score", "max_count"):
            for label in getattr(self, field_name):
                if label not in known:
                    raise ConfigError(f"recipe {self.name}: {field_name} names unknown class "
                                      f"{label!r} (model classes: {', '.join(map(repr, class_names))})")
        for label in self.critical:
            if label not in known:
                raise ConfigError(f"recipe {self.name}: critical names unknown class {label!r} "
                                  f"(model classes: {', '.join(map(repr, class_names))})")


_VERSION_PART = re.compile(r"(\d+)")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A recipe version's place in order: runs of digits compare as numbers, the rest as
    text, a digit run before text (``2`` < ``3`` < ``10``, ``1.9`` < ``1.10``, ``v2`` <
    ``v10``, ``2`` < ``2b``); ``3`` and ``03`` are one place."""
    return tuple((0, int(part)) if part.isdecimal() else (1, part)
                 for part in _VERSION_PART.split(version) if part)


def rules_digest(recipe: Recipe) -> str:
    """SHA-256 of the rules a recipe version stands for: all but ``version`` and
    ``model_version``. A pin is left out: every stored verdict names the model version
    (and its sha256) that judged it beside the recipe's, so pinning the version a recipe
    was written for (what a refused pull says to do) keeps the recipe's version; a model,
    a threshold, a region or a count changed needs a new one."""
    # fields left at their defaults are left out: a field a later release adds (with a
    # default that judges as before) must not make every kept version "other rules"; and
    # the same rules in another order (critical classes, keys) are one digest
    rules = recipe.model_dump(mode="json", exclude={"version", "model_version"},
                              exclude_defaults=True)
    if "critical" in rules:
        rules["critical"] = sorted(set(rules["critical"]))
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()


def check_distinct(recipes: list[tuple[str, Recipe]]) -> None:
    """Refuse configured recipes (``(file, recipe)`` in the config's order) two of which
    share a name, or have names that differ only in case: the later replaced the earlier
    unseen (a recipe file copied for a new product and not renamed judged the first
    product by the copy's rules), and ``a`` beside ``A`` is one product taken for the
    other by whoever chooses by name (session 54)."""
    seen: dict[str, tuple[str, str]] = {}
    for where, recipe in recipes:
        key = recipe.name.lower()  # names are ASCII (names.NAME_RE): no other folding
        if key in seen:
            name, first = seen[key]
            if name == recipe.name:
                raise ConfigError(f"recipes: {first} and {where} both name recipe {name}: the "
                                  "later would replace the earlier unseen; give each product "
                                  "its own name")
            raise ConfigError(f"recipes: {first} names recipe {name} and {where} recipe "
                              f"{recipe.name}, names that differ only in case: a PLC, a page "
                              "or a person choosing by name would take one for the other; "
                              "rename one")
        seen[key] = (recipe.name, where)


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: PyYAML (YAML 1.1) reads ``5e-1`` or ``1e3`` (no dot) as
    text, which the recipe's strict numbers would refuse though the file says a number."""


_Loader.add_implicit_resolver(  # on the subclass only: yaml.safe_load is left as it is
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    text = read_text(path, "recipe")  # (a FIFO nobody writes to waited forever)
    try:
        doc = load_yaml(text, _Loader)  # a SafeLoader: no tags run code
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        # no place to point at (nesting past the stack, a number too long): say what
        raise ConfigError(f"{path}:{where} invalid YAML" + ("" if mark else f": {exc}")) from None
    if not isinstance(doc, dict):  # pydantic said "a valid dictionary or instance of Recipe"
        found = "an empty file" if doc is None else f"a {type(doc).__name__}"
        raise ConfigError(f"{path}: a recipe is a mapping of settings (name, version, model "
                          f"and its rules), not {found}")
    try:
        recipe = Recipe.model_validate(doc)
    except ValidationError as exc:
        fields = describe_validation(exc.errors(), Recipe)
        if any(e["type"] == "string_type" and isinstance(e.get("input"), int | float)
               for e in exc.errors()):  # version: 1e3, 2: YAML read a number
            fields += " (a name or version YAML reads as a number, e.g. 1e3 or 2, is quoted: '1e3')"
        raise ConfigError(f"{path}: {fields}") from None
    if recipe.remote is not None and not Path(recipe.remote.card).is_absolute():
        # a remote model's card is found beside the recipe file, wherever it is run from
        card = str((path.parent / recipe.remote.card).resolve())
        recipe = recipe.model_copy(update={"remote": recipe.remote.model_copy(update={"card": card})})
    return recipe
