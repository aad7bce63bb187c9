"""Loading local pretrained weights (whole model or backbone) with a clear report."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lineside_inspect.errors import ConfigError

PREFIXES = ("", "model.", "backbone.", "model.backbone.", "module.", "model.backbone.body.")


def _torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """A torchvision weights name such as ``ResNet50_Weights.IMAGENET1K_V2`` (downloaded
    into torch's cache, so this needs the network the first time)."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ConfigError(f"{name!r} is neither a local file nor a torchvision weights name "
                          "(e.g. ResNet50_Weights.IMAGENET1K_V2)") from None
    try:
        return dict(weights.get_state_dict(progress=False))
    except OSError as exc:
        raise ConfigError(f"cannot fetch torchvision weights {name}: {exc}; download them on "
                          "a connected machine and pass the file path") from None


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load a state dict (or a Lineside checkpoint's ``model``) into ``model`` non-strictly.

    Keys are matched as they are or under common prefixes (``backbone.``, ``module.``), so
    a backbone-only file fits a whole detector. Shape mismatches are skipped and
    reported. Returns a one-paragraph report; raises when nothing matches.
    """
    if not Path(path).is_file() and "." in str(path) and "/" not in str(path):
        state = _torchvision_weights(str(path))
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: weights file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise ConfigError(f"{path}: not a torch state dict: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    # try each way of lining the file's keys up with the model's: as they are, with a
    # known prefix stripped (a backbone saved from a bigger model) or added
    best: dict[str, torch.Tensor] = {}
    for prefix in PREFIXES:
        for mode in ("strip", "add"):
            candidate: dict[str, torch.Tensor] = {}
            for k, v in state.items():
                if mode == "strip":
                    key = k[len(prefix):] if prefix and k.startswith(prefix) else k
                else:
                    key = prefix + k
                candidate[key] = v
            matched = {k: v for k, v in candidate.items() if k in own}
            if len(matched) > len(best):
                best = matched
    loadable = {k: v for k, v in best.items() if v.shape == own[k].shape}
    mismatched = sorted(set(best) - set(loadable))
    if not loadable:
        raise ConfigError(f"{path}: no tensor matches the model's parameters")
    missing = sorted(set(own) - set(loadable))
    unexpected = len(state) - len(best)
    model.load_state_dict(loadable, strict=False)
    return (f"loaded {len(loadable)}/{len(own)} tensors from {path}; "
            f"missing {len(missing)}" + (f" (e.g. {', '.join(missing[:3])})" if missing else "")
            + f"; unexpected {unexpected}; shape mismatch {len(mismatched)}"
            + (f" (e.g. {', '.join(mismatched[:3])})" if mismatched else ""))
