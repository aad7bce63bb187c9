"""A compact U-Net that outputs the anomaly mask directly (no pretrained backbone).

A two-convolution stem to 1/4 of the input (a 3 px pinhole still shows in its channels),
encoder to 1/32 (context: a pad is normal, the same blob between traces is not), FPN-style
decoder (upsample, 1x1 lateral, add, 3x3) back to 1/4, logits upsampled bilinearly to the
input. About 1 GFLOP at 640x640 with width 16, so it trains from scratch on two shared CPU
cores in minutes and judges a frame faster than the bundled detector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AnomalyNet(nn.Module):
    """float ``[N, 3, H, W]`` in [0, 1] -> anomaly logits ``[N, 1, H, W]`` (H, W multiples
    of 32)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 6 * width
        self.stem = nn.Sequential(_block(3, c1 // 2, 2), _block(c1 // 2, c1, 2), _block(c1, c1))  # 1/4
        self.down2 = nn.Sequential(_block(c1, c2, 2), _block(c2, c2))   # 1/8
        self.down3 = nn.Sequential(_block(c2, c3, 2), _block(c3, c3))   # 1/16
        self.down4 = nn.Sequential(_block(c3, c4, 2), _block(c4, c4))   # 1/32
        self.lat3, self.lat2, self.lat1 = nn.Conv2d(c4, c3, 1), nn.Conv2d(c3, c2, 1), nn.Conv2d(c2, c1, 1)
        self.up3, self.up2, self.up1 = _block(c3, c3), _block(c2, c2), _block(c1, c1)
        self.head = nn.Conv2d(c1, 1, 1)
        assert self.head.bias is not None
        nn.init.constant_(self.head.bias, -4.0)  # start near "all normal": anomalies are rare

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.stem(x)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.down4(f3)
        u = self.up3(f3 + self.lat3(F.interpolate(f4, size=f3.shape[2:], mode="nearest")))
        u = self.up2(f2 + self.lat2(F.interpolate(u, size=f2.shape[2:], mode="nearest")))
        u = self.up1(f1 + self.lat1(F.interpolate(u, size=f1.shape[2:], mode="nearest")))
        return F.interpolate(self.head(u), size=x.shape[2:], mode="bilinear", align_corners=False)


def image_score(anomaly_map: Tensor, topk: int) -> Tensor:
    """``[N, 1, H, W]`` map -> ``[N]`` image score: the mean of its ``topk`` highest pixels
    (a few pixels' worth, so one noisy pixel does not fail a part, a small defect does)."""
    return anomaly_map.flatten(1).topk(topk, dim=1).values.mean(1)


class AnomalyGraph(nn.Module):
    """The exported graph: uint8 RGB ``[N, 3, S, S]`` in; ``anomaly_map`` ``[N, 1, S, S]``
    in [0, 1] and ``score`` ``[N]`` out."""

    def __init__(self, net: AnomalyNet, topk: int) -> None:
        super().__init__()
        self.net, self.topk = net, topk

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        amap = torch.sigmoid(self.net(images.float() / 255.0))
        return amap, image_score(amap, self.topk)
