"""The shadow model's own process: it judges the frames it is sent and sends back its
results, at the lowest CPU priority the system has.

A process, not a thread of the server: a low-priority thread would still share the
server's GIL, and while the scheduler keeps it waiting with the GIL held every verdict
waits too (measured: the line-rate p50 doubled). Here the shadow has its own interpreter,
runs under ``SCHED_IDLE`` (Linux; elsewhere ``nice``), so it only gets CPU time nothing
else wants, and its onnxruntime session is single-threaded so no pool of normal-priority
threads works for it.

Messages: jobs ``(token, image, reference, recipe, anomaly, partner)`` in (``image``: the
encoded bytes as received, decoded here as the service decoded them
(:func:`~lineside_inspect.imageio.decode_frame` under the server's ``max_pixels``: a grey
JPEG grey, a frame over the built-in pixel limit but within the server's judged, not an
error), or a camera's decoded frame; ``anomaly``: the served good-only model's
finding in a fused recipe, else None; ``partner``: when the shadow is the good-only model
the recipe fuses with a detector, that detector's ``(card, detections)`` on the frame as
served, fused with the shadow's own finding (the detector is not loaded here, nor run
again; ``reference`` is then the golden it compared the frame with), else None; ``None``
ends the process), results ``(token, doc)`` out, ``("ready", info)`` once the model is
loaded or ``("failed", message)`` if it cannot be.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from multiprocessing import parent_process
from typing import Any

import numpy as np

READY = "ready"
FAILED = "failed"


def lower_priority(nice: int) -> str:
    """Idle scheduling if the system has it, else ``nice``; what was set."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(nice)
        return f"nice {nice}"


def serve(package: str, device: str, threads: int, nice: int, jobs: Any, results: Any,
          card: str | None = None, max_pixels: int | None = None) -> None:
    """The process's main: load the package, then judge jobs until told to stop or the
    server is gone. ``card``: the :func:`~lineside_inspect.package.card_digest` of the
    package the server loaded under this version: the folder is read again here, and a
    package changed on disk since (``lineside calibrate --write`` in place) is refused,
    not judged under the loaded version's name. ``max_pixels``: the service's, which the
    frames and goldens sent as bytes were decoded under (None: the built-in limit)."""
    priority = lower_priority(nice)
    try:
        from lineside_inspect.imageio import decode_frame
        from lineside_inspect.inspector import anomaly_finding, fused_verdict, inspect
        from lineside_inspect.opencv import MAX_IMAGE_PIXELS
        from lineside_inspect.package import card_digest
        from lineside_inspect.recipes import Recipe
        from lineside_inspect.references import Reference
        from lineside_inspect.runtime.detector import Detector

        det = Detector(package, device=device, threads=threads)
    except Exception as exc:
        results.put((FAILED, f"{type(exc).__name__}: {exc}"))
        return
    if card is not None and card_digest(det.card) != card:
        results.put((FAILED, "its package changed on disk since the server loaded it (another "
                             "graph or card under the same version): load the changed package "
                             "as a new version"))
        return
    pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    results.put((READY, {"pid": os.getpid(), "priority": priority}))
    parent = parent_process()
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the server died: nobody is left to send results to
            continue
        if job is None:
            return
        token, image, reference, recipe, anomaly, partner = job
        try:
            t = time.perf_counter()
            # one decode path: the pixels the served model saw (before: the built-in pixel
            # limit, and a grey JPEG made BGR)
            frame = decode_frame(image, pixels) if isinstance(image, bytes) else np.asarray(image)
            rules = Recipe.model_validate(recipe)
            if partner is not None:  # the good-only partner: fused with the served detections
                detector_card, detections = partner
                ref = None if reference is None else Reference.from_bytes(None, reference, pixels)
                verdict = fused_verdict(frame, detector_card, rules, detections,
                                        anomaly_finding(frame, det, rules), ref)
                outcome, defects, reasons = verdict.outcome, verdict.defects, verdict.reasons
            else:
                ref = (Reference.from_bytes(None, reference, pixels)
                       if reference is not None and det.needs_reference else None)
                result = inspect(frame, det, rules, reference=ref, anomaly_finding=anomaly)
                outcome, defects, reasons = result.verdict, result.defects, result.reasons
            results.put((token, {"verdict": outcome, "defects": defects.to_json(),
                                 "reasons": [r.model_dump() for r in reasons],
                                 "ms": (time.perf_counter() - t) * 1000}))
        except Exception as exc:
            results.put((token, {"error": f"{type(exc).__name__}: {exc}"}))
