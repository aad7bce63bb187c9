"""The one inspection path.

Whatever starts an inspection (an uploaded image, a camera trigger, a continuous camera,
later a PLC) calls :class:`InspectionService`, so a verdict means the same whichever way
the frame arrived: the same recipe and pinned detector, the same reference rules, the
same limiter slot, and the same outputs afterwards (metrics, the store, and whatever
hangs off :meth:`InspectionService.add_output`: line outputs, shadow models).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from lineside_inspect.draw import annotate
from lineside_inspect.errors import (
    ConfigError,
    DeadlineExceeded,
    ImageError,
    ImageTooLargeError,
    LinesideError,
    NotFoundError,
    Overloaded,
    RecipeBreaksCamera,
    ReferenceBreaksCamera,
    ReferenceImageError,
    echo,
)
from lineside_inspect.imageio import decode_frame, encode_jpeg, header_size, sniff_format
from lineside_inspect.inspector import FrameTiming, Inspection, inspect
from lineside_inspect.recipes import Recipe
from lineside_inspect.recipes.rules import blank_reference
from lineside_inspect.references import (
    Reference,
    ReferenceLibrary,
    is_reference_name,
    resolve_reference,
)
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.limiter import Limiter
from lineside_inspect.server.metrics import Metrics
from lineside_inspect.server.registry import Registry

if TYPE_CHECKING:
    from lineside_inspect.cameras import CameraManager
    from lineside_inspect.config import CameraConfig
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.service")

API_CAMERA = "(api)"  # metrics label for inspections not from a configured camera
FAILURE_LOG_S = 60.0  # a continuous camera that keeps failing is logged once a minute

Output = Callable[[Inspection], None]


class InspectionService:
    """Runs every inspection of a server. Outputs added with :meth:`add_output` are
    called after the verdict (and after the store) on the inspection's worker thread; they
    must hand work off rather than block, and an output that raises is logged, never fatal."""

    def __init__(self, *, registry: Registry, limiter: Limiter, metrics: Metrics,
                 references: ReferenceLibrary, max_pixels: int,
                 store: Store | None = None, cameras: CameraManager | None = None) -> None:
        self.registry = registry
        self.limiter = limiter
        self.metrics = metrics
        self.references = references
        self.max_pixels = max_pixels
        self.store = store
        self.cameras = cameras
        self._outputs: list[Output] = []
        self._tasks: list[asyncio.Task[None]] = []
        # read at each scrape: set after each inspection, it stood still while refusals,
        # /v2 infers or stuck slots held the server (OIP review, session 33)
        metrics.queue.set_function(lambda: limiter.in_system)

    def add_output(self, output: Output) -> None:
        self._outputs.append(output)

    # -- the entry points -------------------------------------------------------------
    async def inspect_image(self, data: bytes, *, recipe: str | None = None,
                            camera_id: str | None = None, part_id: str | None = None,
                            reference_name: str | None = None,
                            reference_data: bytes | None = None,
                            draw: bool = False) -> Inspection:
        """Inspect an encoded image (JPEG, PNG or BMP). Decoding runs in the limiter's
        slot, off the event loop, so decoded pixels in memory are bounded by it. ``draw``:
        answer with the frame drawn (``Inspection.drawn``) instead of the JSON."""
        rule, detector, anomaly = self._pin(recipe)
        self._check_header(data, "image")
        if reference_data is not None:
            self._check_header(reference_data, "reference")

        def work() -> Inspection:
            t = time.perf_counter()
            image = decode_frame(data, self.max_pixels)
            decode_ms = (time.perf_counter() - t) * 1000
            ref = resolve_reference(detector.needs_reference, detector.card.name, self.references,
                                    data=reference_data, name=reference_name)
            result = inspect(image, detector, rule, decode_ms=decode_ms, camera_id=camera_id,
                             part_id=part_id, reference=ref, anomaly_model=anomaly)
            result.raw, result.raw_ext = data, sniff_format(data).replace("jpeg", "jpg")
            return result

        return await self._run(work, answer=not draw, draw=draw)

    async def inspect_camera(self, camera_id: str, *, part_id: str | None = None,
                             recipe: str | None = None, timeout_s: float = 2.0,
                             answer: bool = True, draw: bool = False,
                             triggered_at: float | None = None,
                             reserved: bool = False, holder: str | None = None) -> Inspection:
        """Inspect the first frame ``camera_id`` captures after the trigger
        (``triggered_at``, ``time.monotonic()``; default: this call), never one from
        before it. ``timeout_s`` bounds the wait for the frame and for the slot together;
        the wait holds no thread. ``answer``: encode the JSON answer on the worker thread
        (an HTTP trigger sends it; a PLC does not); ``draw``: draw the frame instead
        (``Inspection.drawn``); ``reserved``: a PLC's trigger, which takes one of the line's
        own places when the shared ones are full (``Limiter.reserve``); ``holder``: the
        key whose share of the places the inspection takes, from the frame's arrival (the
        wait for it takes no place)."""
        # monotonic: a wall-clock step must not make an older frame pass for a fresh one
        arrived = time.monotonic() if triggered_at is None else triggered_at
        deadline = arrived + timeout_s
        manager = self._manager()
        cfg = manager.configs.get(camera_id)
        if cfg is None:
            manager.worker(camera_id)  # raises not found, naming the configured cameras
            raise NotFoundError(f"unknown camera {echo(camera_id)}")
        rule, detector, anomaly = self._pin(recipe or cfg.recipe)
        frame = await manager.fresh_frame(camera_id, after=arrived,
                                          timeout_s=max(0.0, deadline - time.monotonic()))
        remaining = max(0.0, deadline - time.monotonic())

        def work() -> Inspection:
            # the golden image is resolved here, off the event loop (its first use decodes it)
            ref = self._camera_reference(cfg, detector, rule)
            result = inspect(frame.image, detector, rule, camera_id=camera_id, part_id=part_id,
                             reference=ref, anomaly_model=anomaly)
            result.frame = FrameTiming(frame.timestamp,
                                       (time.monotonic() - frame.monotonic) * 1000,
                                       (frame.monotonic - arrived) * 1000)
            return result

        return await self._run(work, timeout_s=min(remaining, self.limiter.timeout_s),
                               answer=answer and not draw, draw=draw, reserved=reserved,
                               holder=holder)

    async def inspect_frame(self, camera_id: str, image: np.ndarray) -> Inspection:
        """Inspect a frame already captured by ``camera_id`` (continuous mode)."""
        cfg = self._manager().configs[camera_id]
        rule, detector, anomaly = self._pin(cfg.recipe)

        def work() -> Inspection:
            ref = self._camera_reference(cfg, detector, rule)
            return inspect(image, detector, rule, camera_id=camera_id, reference=ref,
                           anomaly_model=anomaly)

        return await self._run(work)

    def check_cameras(self) -> None:
        """Refuse at start-up (:class:`ConfigError`, naming each camera) what the config
        itself contradicts: a camera whose recipe's model (loaded from the config) needs a
        golden image and the camera names none, or the reverse. Runs before anything starts.
        What may still arrive is no reason to refuse: see :meth:`warn_cameras`."""
        contradictions, _missing = self._camera_problems()
        if contradictions:
            raise ConfigError("; ".join(contradictions))

    def cameras_with_recipe(self, name: str) -> list[CameraConfig]:
        """The configured cameras that trigger with recipe ``name``: by name, as the
        default recipe (the first recipe put becomes the default), or as the recipe their
        PLC station picked."""
        if self.cameras is None:
            return []
        default = self.registry.default_recipe or name
        picked = self.cameras.plc_recipe  # a PLC station's choice, when the line sets one
        return [cfg for cfg in self.cameras.configs.values()
                if name in ((cfg.recipe or default), picked(cfg.id) if picked else None)]

    def check_recipe_for_cameras(self, recipe: Recipe) -> None:
        """Refuse (:class:`RecipeBreaksCamera`) a new ``recipe`` that a configured camera
        triggers with when its model's need for a golden image contradicts that camera's
        config: the camera's every trigger would fail until a restart. A recipe naming a
        model not loaded passes here (its own 404 follows)."""
        try:
            detector = self.registry.detector(recipe.model, recipe.model_version)
        except LinesideError:
            return
        # and the cameras that name a golden for it: a PLC may switch them to it
        named = [cfg for cfg in self.cameras.configs.values() if recipe.name in cfg.references] \
            if self.cameras is not None else []
        users = {cfg.id: cfg for cfg in [*self.cameras_with_recipe(recipe.name), *named]}
        broken = [cid for cid, cfg in users.items()
                  if detector.needs_reference != (cfg.reference_for(recipe.name) is not None)]
        if broken:
            need = ("compares each frame with a golden image, and camera(s) {} name none"
                    if detector.needs_reference else
                    "takes no golden image, and camera(s) {} name one")
            raise RecipeBreaksCamera(
                f"recipe {recipe.name}: model {recipe.model} " + need.format(", ".join(broken))
                + " in the server's config; their triggers would all fail. Put the recipe "
                "under another name, or change the cameras' config")

    def check_reference_unused(self, name: str) -> None:
        """Refuse (:class:`ReferenceBreaksCamera`) to drop the golden image ``name`` while a
        configured camera names it: the camera's every trigger would fail until it is put
        back (a PLC reads ErrorCode 7)."""
        if self.cameras is None:
            return
        users = [cfg.id for cfg in self.cameras.configs.values()
                 if name in cfg.reference_names()]
        if users:
            raise ReferenceBreaksCamera(
                f"reference {name} is the golden image camera(s) {', '.join(users)} compare "
                "each frame with in the server's config; their triggers would all fail. "
                "Put a new image under this name instead, or change the cameras' config")

    def warn_cameras(self) -> None:
        """Once every start-up hook ran: a WARNING for each camera that cannot inspect yet,
        naming what is missing (its recipe, e.g. one a fleet box gets with its first model
        pull; its reference, e.g. one to be registered with PUT /v1/references). Its
        triggers fail meanwhile as at run time (for a PLC: ErrorCode 6 or 7)."""
        contradictions, missing = self._camera_problems()
        for problem in contradictions + missing:
            log.warning("%s", problem)

    def _camera_problems(self) -> tuple[list[str], list[str]]:
        """(what the config contradicts, what is not there yet), one line per camera."""
        contradictions: list[str] = []
        missing: list[str] = []
        if self.cameras is None:
            return contradictions, missing
        for cfg, recipe in self._camera_recipes():
            try:
                rule, detector, _ = self._pin(recipe)
            except LinesideError as exc:  # a recipe (or a model it names) not loaded (yet)
                missing.append(f"camera {cfg.id}: {exc.message}. Its triggers "
                               + ("fail until it is loaded" if recipe == cfg.recipe else
                                  f"with recipe {recipe} (its cameras[].references) fail "
                                  "until it is loaded")
                               + " (a fleet box's model pull, PUT /v1/recipes/NAME)")
                continue
            if detector.needs_reference != (cfg.reference_for(rule.name) is not None):
                try:
                    resolve_reference(detector.needs_reference, detector.card.name,
                                      self.references, name=cfg.reference_for(rule.name),
                                      camera=cfg.id, recipe=rule.name)
                except LinesideError as exc:
                    contradictions.append(exc.message)  # it names the camera
                continue
            if cfg.reference_for(rule.name) is not None:
                try:
                    ref = self._camera_reference(cfg, detector, rule)
                except LinesideError as exc:
                    missing.append(f"{exc.message}. Its triggers fail until then")
                    continue
                # a blank golden over PUT /v1/references is refused; one in the config (a
                # file, or one dropped in references_dir) was silent, and every trigger
                # failed as blank_frame, telling the PLC to check a camera that was fine
                if ref is not None and (blank := blank_reference(rule, ref)) is not None:
                    missing.append(
                        f"camera {cfg.id}: its golden image {ref.name} is nearly blank, it "
                        f"spans {blank.contrast} grey levels (5th to 95th percentile), under "
                        f"recipe {rule.name}'s min_contrast {blank.minimum}: its triggers "
                        "fail as blank_frame until it shows the part (or the recipe sets "
                        "min_contrast lower for a part that flat)")
        return contradictions, missing

    def _camera_recipes(self) -> list[tuple[CameraConfig, str | None]]:
        """Each camera with the recipe it starts with, then each recipe its
        ``references`` gives a golden image for (one a PLC may switch it to)."""
        assert self.cameras is not None
        out: list[tuple[CameraConfig, str | None]] = []
        for cfg in self.cameras.configs.values():
            out.append((cfg, cfg.recipe))
            starts = cfg.recipe or self.registry.default_recipe
            out += [(cfg, name) for name in cfg.references if name != starts]
        return out

    # -- continuous cameras -------------------------------------------------------------
    def start_continuous(self) -> None:
        """One task per continuous-mode camera, on the event loop: each takes its camera's
        newest frame at ``rate_hz`` through the same limiter as every other request, so a
        busy server skips frames instead of queueing them."""
        manager = self.cameras
        if manager is None:
            return
        for cfg in manager.configs.values():
            if cfg.mode == "continuous":
                self._tasks.append(asyncio.create_task(self._continuous(cfg.id, cfg.rate_hz),
                                                       name=f"continuous-{cfg.id}"))

    async def stop_continuous(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _continuous(self, camera_id: str, rate_hz: float) -> None:
        worker, last_seq = self._manager().worker(camera_id), 0
        failing = _Failures(camera_id)
        while True:
            await asyncio.sleep(1.0 / rate_hz)
            frame = worker.latest()
            if frame is None or frame.seq == last_seq or not worker.online():
                continue
            last_seq = frame.seq
            try:
                await self.inspect_frame(camera_id, frame.image)
            except (Overloaded, DeadlineExceeded) as exc:  # a busy server skips frames
                log.debug("continuous %s: %s", camera_id, exc.message)
            except LinesideError as exc:  # recipe or model gone, reference refused...
                failing.failed(exc.message)
            except Exception:
                log.exception("continuous inspection on %s failed", camera_id)
            else:
                failing.passed()

    def models_for(self, recipe: str | None) -> tuple[Recipe, Detector, Detector | None]:
        """What an inspection with ``recipe`` would be pinned to now: the recipe, its
        detector and the good-only model fused with it (a :class:`LinesideError` when it
        is not there)."""
        return self._pin(recipe)

    # -- shared steps ---------------------------------------------------------------------
    def _pin(self, recipe: str | None) -> tuple[Recipe, Detector, Detector | None]:
        """The recipe, its detector and the good-only model fused with it (if it names
        one) this inspection will use from start to end, even if a new version is
        activated meanwhile."""
        return self.registry.pin(recipe)

    def _check_header(self, data: bytes, what: str) -> None:
        """Refuse a bomb or a non-image from its header, before queueing for a slot."""
        try:
            width, height = header_size(data)
        except ImageError as exc:
            if what == "image":  # the frame's errors read as they always have
                raise
            raise exc.prefixed(f"{what} image") from None
        if width * height > self.max_pixels:
            raise ImageTooLargeError(f"{what} is {width}x{height} = {width * height} pixels, "
                                     f"over the limit of {self.max_pixels}")

    def _camera_reference(self, cfg: CameraConfig, detector: Detector,
                          rule: Recipe) -> Reference | None:
        """The golden image camera ``cfg`` names for ``detector``. One it names that is not
        there (not registered yet, a file gone or unreadable) is a reference error, like a
        reference the model cannot take: the recipe cannot run on this camera now (a PLC
        reads ErrorCode 7), not a missing camera or a model failure."""
        name = cfg.reference_for(rule.name)
        try:
            return resolve_reference(detector.needs_reference, detector.card.name,
                                     self.references, name=name, camera=cfg.id,
                                     recipe=rule.name)
        except ReferenceImageError:
            raise
        except (NotFoundError, ImageError) as exc:
            hint = f" (register it with PUT /v1/references/{name})" \
                if name is not None and is_reference_name(name) else ""
            raise ReferenceImageError(f"camera {cfg.id}: {exc.message}{hint}") from None

    def _manager(self) -> CameraManager:
        if self.cameras is None:
            raise NotFoundError("no cameras are configured on this server")
        return self.cameras

    async def _run(self, make: Callable[[], Inspection], *, timeout_s: float | None = None,
                   answer: bool = False, draw: bool = False,
                   reserved: bool = False, holder: str | None = None) -> Inspection:
        """``make`` the inspection in a limiter slot, then, in the same worker thread (one
        hop off the event loop, not two), metrics, the store, the outputs and, when
        ``answer``, its JSON answer (encoded here rather than on the event loop), or when
        ``draw`` the frame drawn: in the same slot, so the frame and its drawn copy count
        against ``max_concurrency`` as its decoding did, and no second wait for a slot
        comes after the inspection is stored."""

        def work() -> Inspection:
            result = make()
            self._count(result)
            self._record(result)
            if answer:
                result.result_json()
            if draw:
                result.drawn = encode_jpeg(annotate(result.image, result.defects, result.verdict))
            return result

        result = await self.limiter.run(work, timeout_s=timeout_s, reserved=reserved,
                                        holder=holder)
        if result.camera_id is not None and self.cameras is not None \
                and result.camera_id in self.cameras.configs:
            self.cameras.last_results[result.camera_id] = result
        return result

    def _count(self, result: Inspection) -> None:
        m = self.metrics
        # label by configured cameras only: a caller must not grow a series per value it sends
        configured = self.cameras is not None and result.camera_id in self.cameras.configs
        camera = result.camera_id if configured and result.camera_id else API_CAMERA
        m.count_inspection(result.verdict, result.recipe.name, camera, result.defects.labels,
                           result.timings_ms, (r.rule for r in result.reasons))

    def _record(self, result: Inspection) -> None:
        if self.store is not None:
            result.stored = self.store.save(result)
        for output in self._outputs:
            try:
                output(result)
            except Exception:
                log.exception("output %r failed on inspection %s", output, result.id)


class _Failures:
    """A continuous camera's failed inspections, told at WARNING: the first at once, then
    at most once per :data:`FAILURE_LOG_S` with the count since (a camera failing every
    frame would flood the log, one failing silently runs zero inspections unnoticed)."""

    def __init__(self, camera_id: str) -> None:
        self.camera_id = camera_id
        self.count = 0  # failures not yet told
        self.told_at: float | None = None  # rate-limits across passes too (a flapping cause)
        self.failing = False

    def failed(self, message: str) -> None:
        self.count += 1
        self.failing = True
        now = time.monotonic()
        if self.told_at is None or now - self.told_at >= FAILURE_LOG_S:
            log.warning("continuous %s: inspection failed (%d since last told): %s",
                        self.camera_id, self.count, message)
            self.count, self.told_at = 0, now

    def passed(self) -> None:
        if self.failing:
            log.info("continuous %s: inspecting again", self.camera_id)
            self.failing = False
