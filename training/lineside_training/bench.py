"""``lineside bench train``: full-pipeline training throughput vs the bare step."""

from __future__ import annotations

import time
from typing import Any

import torch

from lineside_training.config import TrainConfig
from lineside_training.data.augment import train_transform
from lineside_training.data.dataset import DetectionDataset, collate
from lineside_training.engine import load_data, pick_device
from lineside_training.models import build_model
from lineside_training.threads import choose_threads


def _step(model: Any, opt: Any, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
    loss = sum(model(images, targets).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_train(cfg: TrainConfig, *, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Images/s of the bare forward+backward on synthetic tensors, and of the full pipeline
    (decode, augmentation, batching, step) on the configured dataset. ``crop`` is the
    training crop, None when training sees whole (letterboxed) ``input_size`` images."""
    device = pick_device(cfg.device)
    choose_threads(cfg.threads)  # as the run itself would
    data = load_data(cfg)
    size = cfg.crop_size or cfg.input_size
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(data.class_names), **cfg.model_kwargs)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(cfg.batch_size, 3, size, size, device=device) * 255
    box = torch.tensor([[size * 0.2, size * 0.2, size * 0.3, size * 0.32]], device=device)
    targets = [{"boxes": box, "labels": torch.zeros(1, dtype=torch.int64, device=device)}
               for _ in range(cfg.batch_size)]
    for _ in range(warmup):
        _step(model, opt, images, targets)
    t = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, images, targets)
    bare = steps * cfg.batch_size / (time.perf_counter() - t)

    ds = DetectionDataset(data.dataset, data.train, data.class_names, size=cfg.input_size,
                          transform=train_transform(cfg.augment, cfg.crop_size, cfg.input_size,
                                                    reference=cfg.reference),
                          reference=cfg.reference)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True,
                                         collate_fn=collate, num_workers=cfg.workers,
                                         drop_last=True, persistent_workers=cfg.workers > 0)
    it = iter(loader)
    n = 0
    t = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            t, n = time.perf_counter(), 0
        try:
            imgs, tg = next(it)
        except StopIteration:
            it = iter(loader)
            imgs, tg = next(it)
        tg = [{k: v.to(device) for k, v in x.items() if k != "index"} for x in tg]
        _step(model, opt, imgs.to(device).float(), tg)
        n += len(imgs)
    full = n / (time.perf_counter() - t)
    return {"bare_img_s": bare, "pipeline_img_s": full, "ratio": full / bare,
            "batch_size": cfg.batch_size, "crop": cfg.crop_size, "input_size": cfg.input_size,
            "threads": torch.get_num_threads(),
            "workers": cfg.workers}
