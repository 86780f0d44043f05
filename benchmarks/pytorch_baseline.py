#!/usr/bin/env python3
"""PyTorch baseline for `resnet bench`, measured the same way: one fixed random batch, --warmup
untimed steps, then the median of --steps timed steps, reported as images/s.

    python3 benchmarks/pytorch_baseline.py --depth 18 --stem cifar --batch-size 64 --mode train
    python3 benchmarks/pytorch_baseline.py --depth 18 --stem imagenet --batch-size 256 --mode eval --json

train = forward + cross-entropy + backward + optimizer step (SGD momentum 0.9, wd 5e-4, or Adam);
eval = model.eval() forward under torch.inference_mode(). fp32, eager, on the CPU unless --cuda.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torchvision


def build(depth, stem, num_classes, width):
    fn = getattr(torchvision.models, f"resnet{depth}")
    if width != 64:
        raise SystemExit("width != 64 is not supported by the baseline (torchvision hard-codes 64)")
    model = fn(num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mode", default="train", choices=["train", "eval"])
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--amp-bf16", action="store_true", help="autocast to bfloat16 (CUDA)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.cuda else "cpu")
    # cuDNN picks the fastest convolution algorithm per shape during the warm-up steps: the
    # setting a tuned PyTorch training script uses (TF32 convolutions are PyTorch's default).
    torch.backends.cudnn.benchmark = a.cuda
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build(a.depth, a.stem, a.num_classes, a.width).to(device)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.amp_bf16)
    y = torch.arange(a.batch_size, device=device) % a.num_classes
    times = []
    if a.mode == "train":
        model.train()
        if a.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
        loss_fn = nn.CrossEntropyLoss()
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sync(device)
            if i == 0:
                first = time.perf_counter() - t0
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    else:
        model.eval()
        with torch.inference_mode(), amp:
            for i in range(a.warmup + a.steps):
                t0 = time.perf_counter()
                model(x)
                sync(device)
                if i == 0:
                    first = time.perf_counter() - t0
                if i >= a.warmup:
                    times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    r = {
        "framework": f"pytorch {torch.__version__}",
        "model": f"resnet{a.depth}",
        "stem": a.stem,
        "mode": a.mode,
        "optimizer": a.optimizer,
        "batch_size": a.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "precision": "bf16-amp" if a.amp_bf16 else "fp32",
        "channels_last": a.channels_last,
        "steps": a.steps,
        "median_step_s": med,
        "images_per_sec": a.batch_size / med,
        "min_step_s": min(times),
        "max_step_s": max(times),
        "first_step_s": first,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "setup_and_all_steps_s": time.perf_counter() - started,
    }
    if a.json:
        print(json.dumps(r))
    else:
        print(f"{r['model']} {a.stem} {a.mode} batch {a.batch_size}: {r['images_per_sec']:.1f} images/s "
              f"(median {med:.4f}s/step, {a.steps} steps, {r['threads']} threads, {r['framework']})")


if __name__ == "__main__":
    main()
