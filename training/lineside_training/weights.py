"""Loading local pretrained weights (whole model or backbone) with a clear report."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lineside_inspect.errors import ConfigError

PREFIXES = ("", "model.", "backbone.", "model.backbone.", "module.", "model.backbone.body.")
# how torch's restricted unpickler names an object it refused to build: a crafted file's
# code (posix.system), or a class no Lineside checkpoint holds
_REFUSED = re.compile(r"GLOBAL ([\w.]+)")


def read_torch_file(path: Path, device: str | torch.device = "cpu", *, what: str = "checkpoint",
                    mmap: bool = False) -> Any:
    """``torch.load`` of a file that may come from elsewhere (a run folder copied in, a
    downloaded checkpoint): tensors and plain values only, so a crafted file cannot run
    code. Every failure is one ConfigError line naming the file."""
    _check_crc(path, what)
    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except OSError as exc:  # there but may not be read (a permission): not damage
        raise ConfigError(f"{path}: cannot read the {what} "
                          f"({exc.strerror or type(exc).__name__})") from None
    except Exception as exc:  # torch raises EOF, pickle, key and runtime errors
        # torch's own text runs to many lines and advises loading the file unsafely
        if isinstance(exc, pickle.UnpicklingError) and (found := _REFUSED.search(str(exc))):
            raise ConfigError(f"{path}: refused, not loaded: the {what} holds "
                              f"{found.group(1)}, not only tensors and plain values (loading "
                              "it could run code)") from None
        # an empty file (a run killed while saving, a full disk) raised EOFError, which the
        # CLI's framework printed as "Aborted!"
        raise ConfigError(f"{path}: not a {what} torch can read, empty or damaged "
                          f"({type(exc).__name__})") from None


def _check_crc(path: Path, what: str) -> None:
    """Refuse a checkpoint whose bytes changed since it was written (a disk error, a copy
    altered): torch reads a zip's parts without checking the CRC32 each was stored with,
    and a --resume of a last.pt with flipped bytes trained on, and saved over, damaged
    weights without a word (session 51). A file that is no zip (torch's legacy format) or
    that cannot be opened is left to torch.load, which says so."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError):
        return  # torch.load below names what is wrong
    if bad is not None:
        raise ConfigError(f"{path}: a damaged {what}: its part {bad} does not match the "
                          "checksum it was saved with (a disk error, or a copy altered); "
                          "nothing was read from it: put back a good copy")


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
        state = read_torch_file(path, what="weights file")
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
