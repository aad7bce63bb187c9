"""torchvision's detectors behind the same interface as LSDet, for users who trade
speed for accuracy. Inputs are ``[B, 3, H, W]`` float RGB in ``0..255``; class ids are
``0..C-1`` outside (torchvision's background id 0 is hidden by shifting by one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fcos_resnet50_fpn,
    retinanet_resnet50_fpn,
)

from lineside_training.models.registry import register


class TorchvisionDetector(nn.Module):
    """Adapter: batch tensor in, LSDet-style losses or detections out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        batch = list(images / 255.0)
        if targets is not None:
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            losses: dict[str, Tensor] = self.model(batch, shifted)
            return losses
        out: list[dict[str, Tensor]] = self.model(batch)
        return [{"boxes": o["boxes"], "scores": o["scores"], "labels": o["labels"] - 1} for o in out]


def _common(size: int) -> dict[str, Any]:
    # fixed size, no resizing inside: the data pipeline letterboxes
    return {"min_size": size, "max_size": size, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}


def _wrap(builder: Callable[..., nn.Module], num_classes: int, size: int, **kw: Any) -> nn.Module:
    return TorchvisionDetector(
        builder(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                **_common(size), **kw)
    )


@register("fasterrcnn_mobilenet_v3_fpn")
def fasterrcnn_mobilenet(*, num_classes: int, input_size: int = 640) -> nn.Module:
    """torchvision Faster R-CNN with a MobileNetV3-Large FPN backbone."""
    return _wrap(fasterrcnn_mobilenet_v3_large_fpn, num_classes, input_size)


@register("fcos_resnet50_fpn")
def fcos_resnet50(*, num_classes: int, input_size: int = 640) -> nn.Module:
    """torchvision FCOS with a ResNet-50 FPN backbone."""
    return _wrap(fcos_resnet50_fpn, num_classes, input_size)


@register("retinanet_resnet50_fpn")
def retinanet_resnet50(*, num_classes: int, input_size: int = 640) -> nn.Module:
    """torchvision RetinaNet with a ResNet-50 FPN backbone."""
    return _wrap(retinanet_resnet50_fpn, num_classes, input_size)


__all__ = ["ResNet50_Weights", "TorchvisionDetector"]
