"""Every registered detector trains (loss falls on a fixed batch) and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lineside_inspect.errors import ConfigError
from lineside_training.models import build_model, list_models
from lineside_training.weights import load_weights

SIZE = 128


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = torch.full((2, 3, SIZE, SIZE), 30.0)
    targets = []
    for i in range(2):
        x, y = 20 + 30 * i, 40
        images[i, :, y:y + 24, x:x + 24] = 220 + torch.rand(3, 24, 24, generator=g) * 20
        targets.append({"boxes": torch.tensor([[x, y, x + 24.0, y + 24.0]]),
                        "labels": torch.tensor([i])})
    return images, targets


def test_registry_lists_default_and_torchvision_models() -> None:
    names = list_models()
    assert "lsdet" in names
    assert {"fasterrcnn_mobilenet_v3_fpn", "fcos_resnet50_fpn", "retinanet_resnet50_fpn"} <= set(names)
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build_model("nope", num_classes=2)
    with pytest.raises(TypeError):
        build_model("lsdet", 2)  # type: ignore[misc]  # keyword-only


# the two ResNet-50 zoo models take a minute each on 2 cores and share their torchvision
# code path with fasterrcnn's: `make test-long` runs them
LONG = {"fcos_resnet50_fpn", "retinanet_resnet50_fpn"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.long) if n in LONG else n
                                  for n in list_models()])
def test_loss_falls_and_checkpoint_round_trips(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {} if name.startswith("lsdet") else {"input_size": SIZE}
    model = build_model(name, num_classes=2, **kwargs)
    model.train()
    images, targets = _batch()
    # torchvision's detectors from scratch diverge with Adam at LSDet's learning rate:
    # train them as torchvision's references do (SGD, momentum, clipped gradients)
    if name.startswith("lsdet"):
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses

    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    again = build_model(name, num_classes=2, **kwargs)
    report = load_weights(again, path)
    assert "missing 0" in report and "shape mismatch 0" in report
    model.eval()
    again.eval()
    with torch.no_grad():
        a, b = model(images)[0], again(images)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


def test_backbone_only_weights_report_missing_head(tmp_path: Path) -> None:
    src = build_model("lsdet", num_classes=3)
    backbone = {k: v for k, v in src.state_dict().items() if k.startswith(("stem.", "stages."))}
    path = tmp_path / "backbone.pt"
    torch.save({f"backbone.{k}": v for k, v in backbone.items()}, path)  # prefixed keys
    dst = build_model("lsdet", num_classes=6)
    report = load_weights(dst, path)
    assert f"loaded {len(backbone)}/" in report
    assert "cls_out.bias" in report  # the head is reported missing
    assert torch.equal(dst.state_dict()["stem.0.weight"], src.state_dict()["stem.0.weight"])


def test_bad_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a weights file torch can read"):
        load_weights(build_model("lsdet", num_classes=2), bad)
    with pytest.raises(ConfigError, match="not found"):
        load_weights(build_model("lsdet", num_classes=2), tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="neither a local file nor a torchvision weights name"):
        load_weights(build_model("lsdet", num_classes=2), "Nope_Weights.DEFAULT")
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ConfigError, match="no tensor matches"):
        load_weights(build_model("lsdet", num_classes=2), unrelated)


def test_a_box_between_grid_columns_still_gets_a_location() -> None:
    """A scratch 3 px wide lying between two columns of the stride-8 grid contained no
    location, so no location was ever trained to find it. It takes its nearest one now,
    whose targets reach the box edges; boxes that had locations keep exactly theirs."""
    from lineside_training.models.lsdet import LSDet, assign

    model = LSDet(num_classes=2)
    images = torch.zeros(1, 3, 64, 64)
    sizes = model._level_sizes(images)
    _cls, _reg, _ctr, pts = model.dense(images)
    stride = torch.cat([torch.full((n,), float(s)) for n, s in zip(sizes, model.strides, strict=True)])
    ranges = model._ranges()
    lo = torch.cat([torch.full((n,), r[0]) for n, r in zip(sizes, ranges, strict=True)])
    hi = torch.cat([torch.full((n,), r[1]) for n, r in zip(sizes, ranges, strict=True)])
    # grid columns sit at x = 4, 12, 20, ...: [13, 16] holds none of them
    thin = torch.tensor([[13.0, 10.0, 16.0, 50.0]])
    wide = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    is_pos, _best, targets = assign(pts, stride, lo, hi, thin)
    assert int(is_pos.sum()) == 1
    (where,) = torch.nonzero(is_pos).flatten().tolist()
    x, y = pts[where].tolist()
    assert (x, y) in ((12.0, 28.0), (12.0, 36.0), (20.0, 28.0), (20.0, 36.0))  # nearest to (14.5, 30)
    box = [x - targets[where, 0], y - targets[where, 1], x + targets[where, 2], y + targets[where, 3]]
    assert box[1] == 10.0 and box[3] == 50.0  # the box's own top and bottom
    assert min(box[0], 13.0) >= 13.0 - 4 and max(box[2], 16.0) <= 16.0 + 4  # within half a stride

    both = torch.cat([wide, thin])
    is_pos2, best2, _ = assign(pts, stride, lo, hi, both)
    only_wide, _, _ = assign(pts, stride, lo, hi, wide)
    assert bool((is_pos2 & (best2 == 0)).eq(only_wide).all())  # the wide box keeps its locations
    losses = model(images, [{"boxes": thin, "labels": torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())  # type: ignore[union-attr]


@pytest.mark.parametrize("clipped_gradient", [False, True])
def test_a_box_height_clipped_to_zero_learns_with_clipped_gradient(clipped_gradient: bool) -> None:
    """LSDet's distances are a ReLU, and one clipped to 0 gets no gradient. A thin long box
    (a crack, a cold shut: > 64 px long, on the stride-16 level) predicted with its top and
    bottom clipped to 0 has no area, so its width gets no gradient from the GIoU either: on
    a castings-like set the whole stride-16 level fell to zero-size boxes in 85 s of
    training. With ``clipped_gradient`` the loss passes the gradient through the clip, so
    the height grows back; the values (and the exported graph) stay the ReLU's. Off, as by
    default, the clip holds."""
    from lineside_training.models.lsdet import LSDet

    torch.manual_seed(0)
    model = LSDet(num_classes=2, head_norm="gn", clipped_gradient=clipped_gradient)
    with torch.no_grad():
        model.reg_out.weight.mul_(0.1)
        model.reg_out.bias.copy_(torch.tensor([3.0, -3.0, 3.0, -3.0]))  # l, r > 0; t, b 0
    images = torch.full((1, 3, SIZE, SIZE), 100.0)
    images[0, :, 60:64, 16:112] = 10.0  # a cold shut 96 x 4 px
    thin = [{"boxes": torch.tensor([[16.0, 60.0, 112.0, 64.0]]), "labels": torch.tensor([0])}]

    def heights() -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            _cls, reg, _ctr, _pts = model.dense(images)
        model.train()
        return reg[0, :, 1] + reg[0, :, 3]

    assert float(heights().max()) == 0.0  # boxes without height, widths > 0
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3)
    reached = []
    for _ in range(8):
        losses = model(images, thin)
        opt.zero_grad()
        sum(losses.values()).backward()  # type: ignore[union-attr]
        assert model.reg_out.bias.grad is not None
        reached.append(float(model.reg_out.bias.grad[[1, 3]].abs().sum()))  # the loss at t, b
        opt.step()
    if clipped_gradient:
        assert all(g > 0 for g in reached) and float(heights().max()) > 0  # an area again
    else:
        assert reached[0] == 0.0  # the clip holds the gradient back
