"""LSDet: the CPU-first default detector.

An FCOS-style anchor-free head on a light residual backbone with a feature pyramid,
built from torchvision blocks (``Conv2dNormActivation``, ``FeaturePyramidNetwork``) and
ops (focal loss, GIoU loss, NMS). Designed to train from scratch on crops and to run
on full-resolution images, so small defects keep their pixels.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import (
    Conv2dNormActivation,
    FeaturePyramidNetwork,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from lineside_training.models.postprocess import detections_per_image
from lineside_training.models.registry import register

MEAN, STD = 127.5, 64.0


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = Conv2dNormActivation(ch, ch, 3)
        self.conv2 = Conv2dNormActivation(ch, ch, 3, activation_layer=None)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(Conv2dNormActivation(cin, cout, 3, stride=2),
                         *(_Residual(cout) for _ in range(blocks)))


class LSDet(nn.Module):
    """Anchor-free detector.

    ``forward(images)`` takes ``[B, 3, H, W]`` float RGB in ``0..255`` (H, W multiples of
    32). In training mode with ``targets`` (one dict per image: ``boxes`` ``[N, 4]`` float
    ``x1, y1, x2, y2`` pixels, ``labels`` ``[N]`` int64 in ``0..C-1``) it returns a dict of
    losses; otherwise a list of dicts ``boxes``, ``scores``, ``labels`` per image.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        widths: tuple[int, ...] = (16, 32, 48, 96, 128),
        blocks: tuple[int, ...] = (0, 1, 1, 1, 1),
        fpn_channels: int = 48,
        strides: tuple[int, ...] = (8, 16),
        head_convs: int = 1,
        head_norm: str = "bn",
        clipped_gradient: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # training only (the values, and the exported graph, are the same either way): the
        # loss passes the gradient through the ReLU where it clipped a distance to 0 (see
        # dense). Off by default until measured on the recipes' held-out sets
        self.clipped_gradient = clipped_gradient
        self.strides = strides
        self.stem = Conv2dNormActivation(3, widths[0], 3, stride=2)
        self.stages = nn.ModuleList(
            _stage(widths[i - 1], widths[i], blocks[i]) for i in range(1, len(widths))
        )
        # stage outputs have strides 4, 8, 16, 32; the pyramid uses 8, 16, 32
        self.fpn = FeaturePyramidNetwork(list(widths[2:]), fpn_channels)
        # the head is shared by all pyramid levels: GroupNorm (as in FCOS) keeps one level's
        # statistics from skewing another's; BatchNorm is the faster choice
        if head_norm not in ("bn", "gn"):
            raise ValueError(f"head_norm must be 'bn' or 'gn', got {head_norm!r}")
        norm = partial(nn.GroupNorm, 8) if head_norm == "gn" else nn.BatchNorm2d
        self.cls_tower = nn.Sequential(*(Conv2dNormActivation(fpn_channels, fpn_channels, 3,
                                                              norm_layer=norm)
                                         for _ in range(head_convs)))
        self.reg_tower = nn.Sequential(*(Conv2dNormActivation(fpn_channels, fpn_channels, 3,
                                                              norm_layer=norm)
                                         for _ in range(head_convs)))
        self.cls_out = nn.Conv2d(fpn_channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(fpn_channels, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(fpn_channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(strides)))
        prior = 0.01
        bias_init = -torch.log(torch.tensor((1 - prior) / prior)).item()
        nn.init.constant_(self.cls_out.bias, bias_init)  # type: ignore[arg-type]
        for m in (self.cls_out, self.reg_out, self.ctr_out):
            nn.init.normal_(m.weight, std=0.01)

    # -- dense predictions -------------------------------------------------------------
    def dense(self, images: Tensor, *, live_gradient: bool = False,
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-location predictions over all levels: class logits ``[B, P, C]``, distances
        ``[B, P, 4]`` (l, t, r, b in pixels), centerness logits ``[B, P]``, points ``[P, 2]``.

        ``live_gradient`` (the loss, with ``clipped_gradient``): the distances are the same
        values, but their gradient passes the ReLU where it clipped a distance to 0. Without
        it, a distance clipped to 0 gets no gradient: a thin box (a crack, a cold shut)
        predicted with no height has no area, so its width gets none either, and on a
        castings set the whole stride-16 level, where defects longer than 64 px are learned,
        fell to zero-size boxes within 85 s of training (docs/benchmarks.md, session 35)."""
        x = self.stem((images - MEAN) / STD)
        feats = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                feats[f"p{i}"] = x
        pyramid = list(self.fpn(feats).values())[: len(self.strides)]
        cls, reg, ctr, pts = [], [], [], []
        for level, (feat, stride) in enumerate(zip(pyramid, self.strides, strict=True)):
            c = self.cls_tower(feat)
            r = self.reg_tower(feat)
            _b, _, h, w = feat.shape
            cls.append(self.cls_out(c).flatten(2).transpose(1, 2))
            raw = self.reg_out(r) * self.scales[level]
            clipped = F.relu(raw)
            if live_gradient:  # the value of the ReLU, the gradient of the identity
                clipped = raw + (clipped - raw).detach()
            dist = clipped * stride
            reg.append(dist.flatten(2).transpose(1, 2))
            ctr.append(self.ctr_out(r).flatten(1))
            ys = (torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) * stride
            xs = (torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) * stride
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            pts.append(torch.stack([gx.flatten(), gy.flatten()], 1))
        return torch.cat(cls, 1), torch.cat(reg, 1), torch.cat(ctr, 1), torch.cat(pts, 0)

    def decode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes ``[B, P, 4]`` (x1, y1, x2, y2) and scores ``[B, P, C]`` in ``[0, 1]``."""
        cls, reg, ctr, pts = self.dense(images)
        boxes = torch.cat([pts - reg[..., :2], pts + reg[..., 2:]], dim=-1)
        scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr).unsqueeze(-1))
        return boxes, scores

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if targets is not None:
            return self.loss(images, targets)
        return detections_per_image(*self.decode(images))

    # -- training ----------------------------------------------------------------------
    def _ranges(self) -> list[tuple[float, float]]:
        bounds = [0.0] + [8.0 * s for s in self.strides[:-1]] + [float("inf")]
        return list(itertools.pairwise(bounds))

    def loss(self, images: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cls, reg, ctr, pts = self.dense(images, live_gradient=self.clipped_gradient)
        level_stride = torch.cat([
            torch.full((n,), float(s), device=pts.device)
            for n, s in zip(self._level_sizes(images), self.strides, strict=True)
        ])
        ranges = self._ranges()
        lo = torch.cat([torch.full((n,), r[0], device=pts.device)
                        for n, r in zip(self._level_sizes(images), ranges, strict=True)])
        hi = torch.cat([torch.full((n,), r[1], device=pts.device)
                        for n, r in zip(self._level_sizes(images), ranges, strict=True)])
        cls_t = torch.zeros_like(cls)
        reg_t = torch.zeros_like(reg)
        pos = torch.zeros(cls.shape[:2], dtype=torch.bool, device=cls.device)
        for i, t in enumerate(targets):
            gt, labels = t["boxes"], t["labels"]
            if gt.numel() == 0:
                continue
            is_pos, best, ltrb = assign(pts, level_stride, lo, hi, gt)
            pos[i] = is_pos
            reg_t[i] = ltrb
            cls_t[i, is_pos, labels[best[is_pos]]] = 1.0
        num_pos = max(float(pos.sum()), 1.0)
        loss_cls = sigmoid_focal_loss(cls, cls_t, reduction="sum") / num_pos
        if pos.any():
            p_pts = pts.expand(len(targets), -1, -1)[pos]
            tb = reg_t[pos]
            centerness = torch.sqrt(
                (tb[:, [0, 2]].min(1).values / tb[:, [0, 2]].max(1).values)
                * (tb[:, [1, 3]].min(1).values / tb[:, [1, 3]].max(1).values)
            )
            r = reg[pos]
            pred_box = torch.cat([p_pts - r[:, :2], p_pts + r[:, 2:]], 1)
            true_box = torch.cat([p_pts - tb[:, :2], p_pts + tb[:, 2:]], 1)
            giou = generalized_box_iou_loss(pred_box, true_box, reduction="none")
            loss_box = (giou * centerness).sum() / centerness.sum().clamp(min=1e-6)
            loss_ctr = F.binary_cross_entropy_with_logits(ctr[pos], centerness, reduction="sum")
            loss_ctr = loss_ctr / num_pos
        else:
            loss_box = reg.sum() * 0.0
            loss_ctr = ctr.sum() * 0.0
        return {"cls": loss_cls, "box": loss_box, "ctr": loss_ctr}

    def _level_sizes(self, images: Tensor) -> list[int]:
        h, w = images.shape[-2:]
        return [(h // s) * (w // s) for s in self.strides]


def assign(pts: Tensor, stride: Tensor, lo: Tensor, hi: Tensor,
           gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FCOS assignment of locations to ground-truth boxes, with a fallback.

    ``pts`` ``[P, 2]`` location centres, ``stride`` ``[P]`` their level's stride, ``lo``
    and ``hi`` ``[P]`` the level's size range, ``gt`` ``[G, 4]`` boxes (x1, y1, x2, y2).
    Returns ``is_pos`` ``[P]`` bool, ``best`` ``[P]`` the box index of each location (the
    smallest box among those it may take), and the regression targets ``[P, 4]``
    (l, t, r, b; meaningful where ``is_pos``).

    A location is a candidate for a box when it lies inside it, within 1.5 strides of its
    centre, and the box's size fits the level. A box narrower than a stride can fall
    between the grid's columns and get no location at all, so it was never learned (a
    scratch or crack a few pixels wide); such a box takes its nearest fitting location,
    whose targets are clamped to the box edges it lies beyond, by at most half a stride.
    """
    px, py = pts[:, 0:1], pts[:, 1:2]
    ltrb = torch.stack([px - gt[:, 0], py - gt[:, 1], gt[:, 2] - px, gt[:, 3] - py], -1)
    inside = ltrb.min(-1).values > 0
    gcx, gcy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    radius = 1.5 * stride[:, None]
    central = ((px - gcx).abs() < radius) & ((py - gcy).abs() < radius)
    side = ltrb.max(-1).values
    fits = (side >= lo[:, None]) & (side <= hi[:, None])
    ok = inside & central & fits
    lonely = torch.nonzero(~ok.any(0)).flatten()
    if len(lonely):
        dist = (px - gcx) ** 2 + (py - gcy) ** 2
        dist = torch.where(fits, dist, torch.full_like(dist, float("inf")))
        ok[dist[:, lonely].argmin(0), lonely] = True
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).expand(len(pts), -1)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(1)
    targets = ltrb[torch.arange(len(pts)), best].clamp(min=0.5)
    return torch.isfinite(best_area), best, targets


@register("lsdet")
def lsdet(*, num_classes: int, **kwargs: object) -> LSDet:
    """The default CPU-first detector (about 0.5M parameters)."""
    return LSDet(num_classes=num_classes, **kwargs)  # type: ignore[arg-type]


@register("lsdet-m")
def lsdet_m(*, num_classes: int, **kwargs: object) -> LSDet:
    """A wider LSDet for when latency allows (``kwargs`` as :class:`LSDet`'s, e.g.
    ``head_norm``, over the wider defaults)."""
    wide: dict[str, object] = {"widths": (24, 48, 64, 128, 160), "fpn_channels": 64,
                               "head_convs": 2}
    return LSDet(num_classes=num_classes, **{**wide, **kwargs})  # type: ignore[arg-type]
