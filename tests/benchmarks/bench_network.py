"""Benchmark candidate `UNet` configurations on the CPU (bare network only).

Prints one row per configuration: parameters, receptive field, inference frames/s
(batch 1, float32, inference mode) at 512x512 for the plain ``UNet(config).eval()``
and, at 512x512 and 1024x1024, for ``prepare_for_inference`` (batch-norm folded,
channels-last), the same at 512x512 in bfloat16 (``bf16``, what infer's ``--precision
auto`` runs on CPUs with AMX; nan elsewhere), the seconds of one training step
(forward, loss, backward, AdamW) on a 16x1x128x128 batch, and the single-thread CPU
time [ms] of one prepared 512x512 pass (insensitive to other load; use it to rank
configurations on a busy machine).

Usage::

    python tests/benchmarks/bench_network.py --threads 2
    python tests/benchmarks/bench_network.py --config bundled --skip-train
    python tests/benchmarks/bench_network.py --config base_channels=12,depth=3 --config default

``--config`` takes ``bundled`` (the bundled model's architecture: what infer runs),
``default`` (`UNetConfig`'s defaults, without the fringe channels) or comma-separated
``UNetConfig`` fields; without it a
built-in list of candidates is measured. Timings are the median (``--stat median``,
default) or the minimum (``--stat min``: the best estimate of the uncontended cost on a
busy shared machine) of ``--repeats`` runs after a warm-up; run twice and compare.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from dislotrack.infer.predict import fast_cpu_bfloat16
from dislotrack.models.unet import UNet, UNetConfig, prepare_for_inference

CANDIDATES = [
    "base_channels=8,depth=3,full_res_convs=2,skip_merge=cat",
    "base_channels=8,depth=4,full_res_convs=2,skip_merge=cat",
    "base_channels=8,depth=4,full_res_convs=2,skip_merge=add",
    "base_channels=12,depth=3,full_res_convs=1,skip_merge=add",
    "base_channels=12,depth=4,full_res_convs=1,skip_merge=cat",
    "base_channels=12,depth=4,full_res_convs=1,skip_merge=add",
    "base_channels=12,depth=4,full_res_convs=2,skip_merge=add",
    "base_channels=16,depth=4,full_res_convs=1,skip_merge=cat",
    "base_channels=16,depth=4,full_res_convs=1,skip_merge=add",
    "base_channels=16,depth=4,full_res_convs=2,skip_merge=add",
]


def parse_config(spec: str) -> UNetConfig:
    """``"bundled"`` (the bundled ``default`` model's architecture, fringe channels
    included), ``"bundled:NAME"``, ``"default"`` (`UNetConfig`'s defaults: no fringe
    channels, not the bundled network) or ``"field=value,field=value"`` -> `UNetConfig`."""
    if spec == "bundled" or spec.startswith("bundled:"):
        from dislotrack.models.io import load_model

        return load_model(spec.partition(":")[2] or "default")[0].config
    if spec == "default":
        return UNetConfig()
    types = {f.name: type(getattr(UNetConfig(), f.name)) for f in dataclasses.fields(UNetConfig)}
    kwargs = {}
    for item in spec.split(","):
        key, value = item.split("=")
        kwargs[key] = types[key](value)
    return UNetConfig(**kwargs)


def receptive_field(config: UNetConfig) -> int:
    """Receptive field [px] of the centre output pixel, measured by back-propagation.

    Uses a copy with positive weights so that no ReLU hides part of the field.
    """
    net = UNet(dataclasses.replace(config, norm="none", dropout=0.0))
    with torch.no_grad():
        for p in net.parameters():
            p.abs_().add_(1e-3)
    size = 512
    x = torch.zeros(1, config.in_channels, size, size, requires_grad=True)
    net(x)[0, 0, size // 2, size // 2].backward()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(dim=0) > 0)
    return int(cols.max() - cols.min() + 1)


def time_inference(net: torch.nn.Module, size: int, repeats: int, stat=statistics.median,
                   dtype: torch.dtype | None = None) -> float:
    """Frames/s from the ``stat`` of the run times for a (1, 1, size, size) input, under
    autocast to ``dtype`` (None: float32)."""
    x = torch.randn(1, net.config.in_channels, size, size)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            net(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return 1.0 / stat(times)


def cpu_ms_one_thread(net: torch.nn.Module, size: int, repeats: int) -> float:
    """Least CPU time [ms] of one (1, 1, size, size) forward pass on one thread.

    CPU time of the calling thread hardly depends on other load on the machine, so
    this column ranks configurations reliably even when the wall-clock ones are noisy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(1, net.config.in_channels, size, size)
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(repeats):
            t0 = time.thread_time()
            net(x)
            times.append(time.thread_time() - t0)
    torch.set_num_threads(threads)
    return 1e3 * min(times)


def time_train_step(config: UNetConfig, repeats: int, stat=statistics.median) -> float:
    """``stat`` of the seconds of one training step on a 16x1x128x128 batch."""
    net = UNet(config).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, config.in_channels, 128, 128, generator=gen)
    target = torch.rand(16, 4, 128, 128, generator=gen)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(net(x), target)
        loss.backward()
        opt.step()
        if i >= 1:
            times.append(time.perf_counter() - t0)
    return stat(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="'bundled', 'default' or field=value,...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stat", choices=["median", "min"], default="median")
    parser.add_argument("--skip-1024", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = args.config or CANDIDATES
    stat = {"median": statistics.median, "min": min}[args.stat]

    header = (
        f"{'config':<58} {'params':>8} {'RF px':>6} {'fps512':>7} {'opt512':>7} "
        f"{'opt1024':>7} {'bf16':>7} {'train s':>7} {'cpu1 ms':>7}"
    )
    amx = fast_cpu_bfloat16()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, stat {args.stat}, "
          f"bfloat16 matrix units (AMX): {'yes' if amx else 'no'}")
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for spec in specs:
        config = parse_config(spec)
        net = UNet(config).eval()
        fast = prepare_for_inference(net)
        n_params = sum(p.numel() for p in net.parameters())
        fps512 = time_inference(net, 512, args.repeats, stat)
        opt512 = time_inference(fast, 512, args.repeats, stat)
        n_big = max(3, args.repeats // 2)
        opt1024 = nan if args.skip_1024 else time_inference(fast, 1024, n_big, stat)
        bf16 = time_inference(fast, 512, args.repeats, stat, torch.bfloat16) if amx else nan
        train_s = nan if args.skip_train else time_train_step(config, n_big, stat)
        cpu1 = cpu_ms_one_thread(fast, 512, 5)
        print(
            f"{spec:<58} {n_params:>8d} {receptive_field(config):>6d} {fps512:>7.1f} "
            f"{opt512:>7.1f} {opt1024:>7.1f} {bf16:>7.1f} {train_s:>7.3f} {cpu1:>7.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
