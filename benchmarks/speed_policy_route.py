"""Benchmark: how the inference policy is applied, patched forward vs plain torch calls.

A 3-teacher ``IMUNet(2, 3, 1, alpha=0.5)`` ensemble predicts one batch of 32x3x256x256 at bfloat16
autocast in channels_last, two ways, in the same process and in interleaved rounds:

- ``patched forward``: the teachers prepared by :meth:`monai_im.runtime.RunSettings.prepare_network`
  (the policy inside each network's forward pass), called through ``ensemble_predict``;
- ``torch calls``: the same weights moved with ``network.to(memory_format=torch.channels_last)``, the
  batch converted once with ``contiguous(memory_format=torch.channels_last)``, the forward passes under
  one ``torch.autocast("cpu", dtype=torch.bfloat16)``, the outputs cast to float32 after.

It prints the per-round times, the per-round ratio ``torch calls / patched forward`` (median, min,
max) and whether the two routes give bit-identical logits.

Usage: ``python benchmarks/speed_policy_route.py [--rounds 8] [--batch 32] [--size 256]``
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from speed_common import interleaved, log

from monai_im.networks import IMUNet
from monai_im.runtime import RunSettings, cpu_supports_bf16, ensemble_predict

TEACHERS = 3


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    if not cpu_supports_bf16():
        raise SystemExit("this CPU has no native bfloat16: both routes would run in float32")
    settings = RunSettings(inference_precision="bf16", channels_last=True)
    plain = []
    for seed in range(TEACHERS):
        torch.manual_seed(seed)
        plain.append(IMUNet(2, 3, 1, alpha=0.5).eval())
    patched = [settings.prepare_network(copy.deepcopy(n), "cpu").eval() for n in plain]
    plain = [n.to(memory_format=torch.channels_last) for n in plain]
    x = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def via_patch() -> torch.Tensor:
        return ensemble_predict(patched, x)

    def via_torch() -> torch.Tensor:
        inputs = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs = [n(inputs) for n in plain]
        return torch.stack([o.float() for o in outs])

    same = torch.equal(via_patch(), via_torch())
    log(f"bit-identical logits: {same}")
    times = interleaved({"patched forward": via_patch, "torch calls": via_torch}, args.rounds, log=log)
    for kind in ("wall", "cpu"):
        ratios = [t / p for p, t in zip(times["patched forward"][kind], times["torch calls"][kind])]
        med = {name: statistics.median(v[kind]) for name, v in times.items()}
        log(
            f"{kind}: median patched {med['patched forward']:.3f} s, torch calls {med['torch calls']:.3f} s; "
            f"ratio torch/patched per round: median {statistics.median(ratios):.3f}, "
            f"min {min(ratios):.3f}, max {max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
