"""Which 3D network for the volume bundle: the paper's U-Net in 3D against MONAI's 3D networks.

For each network: parameters, one training step (forward + backward + AdamW) on a batch of CT-sized
patches, and one sliding-window-sized inference forward, on this machine's CPU with the bundle's speed
policy (``RunSettings()``: channels_last_3d and bf16 autocast where the CPU supports it), all in one run
so that the ratios are comparable. Accuracy is compared by the demo study itself (``benchmarks/``
accuracy runs), not here.

Usage::

    python benchmarks/network_3d.py --threads 1 --out benchmarks/results/network_3d.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import BasicUNet, SegResNet, UNet

from monai_im.io import atomic_write_json
from monai_im.networks import IMUNet
from monai_im.runtime import RunSettings

NETWORKS: dict[str, Callable[[int], torch.nn.Module]] = {
    "IMUNet alpha 0.5 (paper's U-Net, 3D)": lambda c: IMUNet(3, 1, c, alpha=0.5),
    "IMUNet alpha 1.0": lambda c: IMUNet(3, 1, c, alpha=1.0),
    "MONAI UNet (spleen_ct_segmentation)": lambda c: UNet(
        3, 1, c, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch"
    ),
    "MONAI BasicUNet (16..256)": lambda c: BasicUNet(3, 1, c, features=(16, 32, 64, 128, 256, 16)),
    "MONAI SegResNet (16 filters)": lambda c: SegResNet(3, init_filters=16, in_channels=1, out_channels=c),
}


def _time(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(patch: tuple[int, int, int], batch: int, classes: int, repeats: int) -> list[dict]:
    """Seconds per training step and per inference forward of every network of :data:`NETWORKS`."""
    settings = RunSettings()
    rows = []
    for name, make in NETWORKS.items():
        torch.manual_seed(0)
        net = settings.prepare_network(make(classes), torch.device("cpu"))
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x = settings.to_memory_format(torch.rand(batch, 1, *patch))
        y = torch.randint(0, classes, (batch, *patch))

        def step(net=net, opt=opt, x=x, y=y) -> None:
            net.train()
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), y)  # the policy's forward: bf16 autocast
            loss.backward()
            opt.step()

        def infer(net=net, x=x) -> None:
            net.eval()
            with torch.no_grad():
                net(x)

        rows.append(
            {
                "network": name,
                "parameters": sum(p.numel() for p in net.parameters()),
                "train_step_s": _time(step, repeats),
                "inference_s": _time(infer, repeats),
            }
        )
        print(
            f"{name:40s} {rows[-1]['parameters'] / 1e6:6.2f} M params  train {rows[-1]['train_step_s']:6.3f} s"
            f"  infer {rows[-1]['inference_s']:6.3f} s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 48])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(tuple(args.patch), args.batch, args.classes, args.repeats)
    base = rows[0]
    print("\n| network | parameters | training step | vs IMUNet 0.5 | inference | vs IMUNet 0.5 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['network']} | {r['parameters'] / 1e6:.2f} M | {r['train_step_s']:.3f} s | "
            f"{r['train_step_s'] / base['train_step_s']:.2f}x | {r['inference_s']:.3f} s | "
            f"{r['inference_s'] / base['inference_s']:.2f}x |"
        )
    if args.out is not None:
        atomic_write_json(
            args.out, {"patch": args.patch, "batch": args.batch, "threads": args.threads, "rows": rows}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
