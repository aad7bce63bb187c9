"""The one seam to onnxruntime: provider choice, threads, graph optimisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from lineside_inspect.errors import ConfigError, PackageError

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


class OnnxSession:
    """An inference session over one ONNX graph."""

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 optimize: bool = True, spinning: bool = True) -> None:
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
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=choose_providers(device))
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise PackageError(f"{path}: onnxruntime cannot load the graph: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: batch})  # type: ignore[no-any-return]
