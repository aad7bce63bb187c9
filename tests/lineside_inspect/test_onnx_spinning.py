"""The server's onnxruntime threads do not spin-wait by default (issue #12: spinning took
the cores from HTTP and the store: round trip 151 ms with it, 91 ms without, on a
loaded 2-core machine); ``onnx_spinning: true`` brings it back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lineside_inspect.config import Settings
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.app import create_app

MODEL = Path(__file__).resolve().parents[2] / "models" / "deeppcb" / "1"
ENTRY = "session.intra_op.allow_spinning"


def _spinning(detector: Detector) -> str:
    options = detector.session.session.get_session_options()
    try:
        return str(options.get_session_config_entry(ENTRY))
    except RuntimeError:  # onnxruntime's way of saying the entry was never set
        return "default (on)"


def test_detectors_spin_unless_told_not_to() -> None:
    assert _spinning(Detector(MODEL, device="cpu", threads=1, warmup=False)) == "default (on)"
    assert _spinning(Detector(MODEL, device="cpu", threads=1, warmup=False,
                              spinning=False)) == "0"


def test_the_server_loads_models_without_spinning_unless_configured(tmp_path: Path) -> None:
    for configured, expected in ((None, "0"), (False, "0"), (True, "default (on)")):
        doc: dict[str, Any] = {"models": [str(MODEL)], "device": "cpu", "threads": 1,
                               "store": False, "data_dir": str(tmp_path / str(configured))}
        if configured is not None:
            doc["onnx_spinning"] = configured
        settings = Settings.model_validate(doc)
        registry = create_app(settings).state.registry
        assert _spinning(registry.load_model(MODEL)) == expected, configured
