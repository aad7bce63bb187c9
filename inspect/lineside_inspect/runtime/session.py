"""The one seam to onnxruntime: provider choice, threads, graph optimisation."""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lineside_inspect.errors import ConfigError, PackageError
from lineside_inspect.runtime.cores import available_cores, machine_cores

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(device: str = "auto") -> list[str]:
    """``auto``: CUDA when onnxruntime has it (falling back to CPU), else CPU."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise ConfigError(f"device 'cuda' requested but onnxruntime offers only {available}")
        return [CUDA, CPU]
    if device != "auto":
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    return [CUDA, CPU] if CUDA in available else [CPU]


class _Running:
    """Inferences in progress in this process on sessions that may overlap. The cores are
    the process's, not one model's: a run of one model goes lean while another model's
    run is in progress (two recipes, a fused good-only model, versions during a swap)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0


_RUNNING = _Running()


class OnnxSession:
    """An inference session over one ONNX graph.

    ``threads`` left unset, on the CPU: onnxruntime's default (the machine's physical
    cores), or the cores this process may use when fewer (:mod:`.cores`: a container's
    cpuset or CPU quota). ``overlap``: how many runs a caller may make at once (a server's
    ``max_concurrency``); over 1, a run that starts while another inference of this
    process is in progress goes to a *lean* session of the same graph with
    ``cores // overlap`` threads. A run alone keeps every core (its latency is what one
    part on the line waits); runs that overlap no longer each ask for every core, which
    on 2 cores put four threads on two and cost ~9% of throughput (measured: issue #12).
    ``threads`` set: every run uses exactly that many.

    ``graph`` (and ``external``, its external data files by name): the graph's bytes as
    verified (``package.load_package``), loaded in place of reading ``path`` again.
    """

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 optimize: bool = True, spinning: bool = True, overlap: int = 1,
                 graph: bytes | None = None, external: Mapping[str, bytes] | None = None
                 ) -> None:
        providers = choose_providers(device)

        def open_(width: int | None) -> ort.InferenceSession:  # a session of that many threads
            return self._open(path, providers, width, optimize, spinning, graph, external)

        cores = available_cores()
        cpu = providers == [CPU]
        wide = threads or (cores if cpu and cores < machine_cores() else None)
        self.session = open_(wide)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()
        lean = max(1, cores // overlap)
        self._lean: queue.SimpleQueue[ort.InferenceSession] | None = None
        if overlap > 1 and threads is None and self.providers == [CPU] and lean < cores:
            self._lean = queue.SimpleQueue()
            # one-thread runs run on their callers' threads, so one session serves them all;
            # wider ones each need a thread pool of their own, or they share one again
            shared = open_(lean) if lean == 1 else None
            for _ in range(overlap):
                self._lean.put(shared or open_(lean))
        self.lean_threads = lean if self._lean is not None else None

    @staticmethod
    def _open(path: Path, providers: list[str], threads: int | None, optimize: bool,
              spinning: bool, graph: bytes | None,
              external: Mapping[str, bytes] | None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spinning:
            # onnxruntime's worker threads otherwise spin-wait between operators and after
            # a run: quickest back to back on an idle machine, but the spinning takes the
            # cores from everything else a server runs (measured: issue #12)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.log_severity_level = 3
        if external:  # by the names the graph gives, as verified
            names = list(external)
            buffers = [external[n] for n in names]
            options.add_external_initializers_from_files_in_memory(
                names, buffers, [len(b) for b in buffers])
        try:
            model = str(path) if graph is None else graph
            return ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise PackageError(f"{path}: onnxruntime cannot load the graph: {exc}") from None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._lean is None:
            return self._run(self.session, batch)
        with _RUNNING.lock:
            alone = _RUNNING.count == 0
            _RUNNING.count += 1
        try:
            if alone:
                return self._run(self.session, batch)
            try:  # one per run that may overlap; a caller beyond ``overlap`` runs wide
                lean = self._lean.get_nowait()
            except queue.Empty:
                return self._run(self.session, batch)
            try:
                return self._run(lean, batch)
            finally:
                self._lean.put(lean)
        finally:
            with _RUNNING.lock:
                _RUNNING.count -= 1

    def warm_up(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run ``batch`` once on every session (the first run of each allocates); the
        first session's outputs."""
        outputs = self._run(self.session, batch)
        if self._lean is not None:
            leans = [self._lean.get() for _ in range(self._lean.qsize())]
            for lean in {id(s): s for s in leans}.values():
                self._run(lean, batch)
            for lean in leans:
                self._lean.put(lean)
        return outputs

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
        return session.run(self.output_names, {self.input_name: batch})  # type: ignore[no-any-return]
