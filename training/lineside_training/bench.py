"""``lineside bench train``: full-pipeline training throughput vs the bare step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from lineside_training.config import TrainConfig
from lineside_training.data.augment import train_transform
from lineside_training.data.dataset import DetectionDataset
from lineside_training.engine import build_train_loader, load_data, pick_device
from lineside_training.models import build_model
from lineside_training.threads import choose_threads


def _step(model: Any, opt: Any, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
    loss = sum(model(images, targets).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued work: a CUDA step returns before it is done, and its time
    would be read into the next batch's loading instead."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(loader: torch.utils.data.DataLoader[Any]) -> Iterator[Any]:
    """The loader's batches across as many epochs as asked for."""
    while True:
        yield from loader


def bench_train(cfg: TrainConfig, *, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Images/s of the bare forward+backward on synthetic tensors, and of the full pipeline
    (augmentation, batching, step) on the configured dataset, drawn as the run draws it
    (its sampler, so ``good_weight`` applies). ``crop`` is the training crop, None when
    training sees whole (letterboxed) ``input_size`` images.

    A run decodes each image the first time it is drawn and keeps it
    (``DetectionDataset``'s cache), so once every image was drawn an epoch costs
    augmentation, not decoding. (With ``good_weight`` < 1 the sampler draws with
    replacement: the first decodes spread over the first few epochs, about half the
    split in the first; with ``workers`` > 0 each worker decodes and keeps its own
    copies.) The training split is therefore decoded before the clock starts, and that
    cost, paid once per image (per worker), is reported on its own (``decode_s``).
    Without it a short bench measured mostly a run's first epoch.
    ``load_ms`` is the wait for each batch (augmentation, collation, conversion to float)
    and ``load_share`` its share of the measured loop."""
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
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, images, targets)
    _sync(device)
    bare = steps * cfg.batch_size / (time.perf_counter() - t)

    ds = DetectionDataset(data.dataset, data.train, data.class_names, size=cfg.input_size,
                          transform=train_transform(cfg.augment, cfg.crop_size, cfg.input_size,
                                                    seed=cfg.seed, reference=cfg.reference),
                          reference=cfg.reference)
    t = time.perf_counter()
    for i in range(len(ds)):  # what the run's first epoch does, once
        ds.image(i)
    decode_s = time.perf_counter() - t
    loader, _ = build_train_loader(cfg, ds, data, 0, 1)
    batches = _batches(loader)
    n, loading = 0, 0.0
    t = time.perf_counter()
    for i in range(warmup + steps):
        _sync(device)
        if i == warmup:
            t, n, loading = time.perf_counter(), 0, 0.0
        t_load = time.perf_counter()
        imgs, tg = next(batches)
        tg = [{k: v.to(device) for k, v in x.items() if k != "index"} for x in tg]
        imgs = imgs.to(device).float()
        _sync(device)
        loading += time.perf_counter() - t_load
        _step(model, opt, imgs, tg)
        n += len(imgs)
    _sync(device)
    elapsed = time.perf_counter() - t
    full = n / elapsed
    return {"bare_img_s": bare, "pipeline_img_s": full, "ratio": full / bare,
            # timed within the same loop as the steps, so the host's drift between the
            # bare and the full measurement does not enter it
            "load_ms": loading * 1000 / steps, "load_share": loading / elapsed,
            "decode_s": decode_s,
            "train_images": len(ds),
            "batch_size": cfg.batch_size, "crop": cfg.crop_size, "input_size": cfg.input_size,
            "threads": torch.get_num_threads(),
            "workers": cfg.workers}
