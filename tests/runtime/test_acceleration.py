"""The speed policy (RunSettings): precision, memory format and compilation wherever a network runs."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch

import monai_im.runtime.acceleration as acc
from monai_im.losses import MaskedDiceCELoss
from monai_im.methods import InconsistencyMask
from monai_im.networks import IMUNet
from monai_im.runtime import RunSettings, cpu_supports_bf16, ensemble_predict

CL = torch.channels_last
BF16 = torch.bfloat16 if cpu_supports_bf16() else None  # what "bf16" resolves to on this CPU


class SpyNet(IMUNet):
    """A tiny IMUNet that records, inside its forward pass, the state the policy put it in."""

    def __init__(self, records: list[dict] | None = None) -> None:
        super().__init__(2, 3, 1, alpha=0.25)
        self.records = records if records is not None else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.records.append(
            {
                "training": self.training,
                "phase": _PHASE[0] if not self.training else "train",
                "channels_last": x.is_contiguous(memory_format=CL) and x.shape[1] > 1,
                "weights_channels_last": _conv_weight(self).is_contiguous(memory_format=CL),
                "autocast": torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
            }
        )
        return super().forward(x)


_PHASE = ["eval"]


def _conv_weight(net: torch.nn.Module) -> torch.Tensor:
    """A 3x3 convolution weight with several input channels (its memory format is unambiguous)."""
    return next(p for p in net.parameters() if p.dim() >= 4 and p.shape[1] > 1 and p.shape[-1] > 1)


def _smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, size + 8, size + 8, generator=g), 9, 1, 0)
    return ((x - x.mean()) / x.std() * 0.2 + 0.5).clamp(0, 1)


# ------------------------------------------------------------------------------------- resolution
def test_defaults_fp32_cpu_training_and_native_bf16_cpu_inference(monkeypatch):
    s = RunSettings()
    assert s.dtype("cpu", training=True) is None
    assert s.dtype("cpu", training=False) is BF16
    assert s.trainer_amp("cpu") == {"amp": False}
    monkeypatch.setattr(acc, "cpu_supports_bf16", lambda: False)
    assert s.dtype("cpu", training=False) is None, "auto never asks an old CPU for bf16"
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        assert RunSettings(inference_precision="bf16").dtype("cpu", training=False) is None
    with pytest.warns(RuntimeWarning, match="gradient scaler"):
        assert RunSettings(precision="fp16").dtype("cpu", training=True) is None
    assert (
        RunSettings(precision="fp32", inference_precision="fp32").describe("cpu")["inference_precision"]
        == "fp32"
    )


@pytest.mark.parametrize("bf16_supported, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_resolution_and_grad_scaler(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    s = RunSettings()
    assert s.dtype("cuda", training=True) == expected and s.dtype("cuda", training=False) == expected
    amp = s.trainer_amp("cuda")
    if expected == torch.float16:  # fp16 training needs MONAI's GradScaler, with the same dtype
        assert amp == {"amp": True, "amp_kwargs": {"dtype": torch.float16}}
    else:
        assert amp == {"amp": False}
    assert RunSettings(precision="fp32").trainer_amp("cuda") == {"amp": False}


def test_bad_values_are_refused_in_one_line():
    with pytest.raises(ValueError, match="precision='half' is not one of auto, fp32, bf16, fp16"):
        RunSettings(precision="half")
    with pytest.raises(ValueError, match="channels_last must be true or false"):
        RunSettings(channels_last="yes")


# ------------------------------------------------------------------------------------- each setting
@pytest.mark.parametrize(
    "settings",
    [
        RunSettings(precision="fp32", inference_precision="fp32", channels_last=False),
        RunSettings(precision="fp32", inference_precision="fp32", channels_last=True),
        RunSettings(precision="bf16", inference_precision="bf16", channels_last=False),
        RunSettings(precision="bf16", inference_precision="bf16", channels_last=True),
    ],
    ids=["eager-fp32", "channels_last", "bf16", "bf16+channels_last"],
)
def test_each_setting_trains_and_infers_on_cpu(settings):
    torch.manual_seed(0)
    net = settings.prepare_network(SpyNet(), "cpu")
    keys = list(IMUNet(2, 3, 1, alpha=0.25).state_dict())
    assert list(net.state_dict()) == keys, "checkpoints keep their names"
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, y = _smooth_images(2), (torch.rand(2, 1, 16, 16) > 0.5).float()
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    out = net(x)
    assert out.dtype == torch.float32 and out.is_contiguous()
    MaskedDiceCELoss(mode="binary")(out, y).backward()
    opt.step()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    net.eval()
    with torch.no_grad():
        pred = net(x)
    assert pred.dtype == torch.float32 and pred.shape == (2, 1, 16, 16)
    train_rec, eval_rec = net.records
    for rec, training in ((train_rec, True), (eval_rec, False)):
        assert rec["autocast"] == settings.dtype("cpu", training)
        assert rec["channels_last"] == rec["weights_channels_last"] == settings.channels_last


def test_to_memory_format_handles_images_and_volumes():
    s = RunSettings()
    assert s.to_memory_format(torch.rand(1, 2, 4, 4)).is_contiguous(memory_format=CL)
    assert s.to_memory_format(torch.rand(1, 2, 4, 4, 4)).is_contiguous(memory_format=torch.channels_last_3d)
    flat = torch.rand(2, 3)
    assert s.to_memory_format(flat) is flat
    net = s.prepare_network(IMUNet(3, 1, 1, alpha=0.25), "cpu").eval()
    assert _conv_weight(net).is_contiguous(memory_format=torch.channels_last_3d)
    assert net(torch.rand(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_preparing_again_keeps_the_forward_and_other_settings_replace_it():
    s = RunSettings()
    net = s.prepare_network(IMUNet(2, 3, 1, alpha=0.25), "cpu")
    fwd = net.forward
    assert s.prepare_network(net, "cpu").forward is fwd
    other = RunSettings(inference_precision="fp32")
    assert other.prepare_network(net, "cpu").forward.settings is other
    clone = copy.deepcopy(net)
    assert clone.forward.module is clone


# ------------------------------------------------------------------------------------- compile
@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc")), reason="torch.compile (inductor) needs a C compiler"
)
def test_compile_matches_eager_and_logs_its_warm_up(caplog):
    torch.manual_seed(0)
    ref = IMUNet(2, 3, 1, alpha=0.25).eval()
    x = torch.rand(2, 3, 16, 16)
    settings = RunSettings(inference_precision="fp32", compile=True)
    net = settings.prepare_network(copy.deepcopy(ref), "cpu").eval()
    with caplog.at_level(logging.INFO, logger="monai_im"), torch.no_grad():
        out = net(x)
        again = net(x)
    assert net.forward.compiled is not None and not settings._compile_failed
    assert net.forward.compile_seconds is not None and net.forward.compile_seconds > 0
    assert any("first compiled call took" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        expected = ref(x)
    assert torch.allclose(out, expected, atol=1e-5) and torch.allclose(again, expected, atol=1e-5)


@pytest.mark.parametrize("where", ["compile", "first_call"])
def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, where):
    calls = []

    def broken_compile(fn, **kwargs):
        calls.append(fn)
        if where == "compile":
            raise RuntimeError("no inductor here")

        def fails(*a, **k):
            raise RuntimeError("C compiler not found")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    ref = IMUNet(2, 3, 1, alpha=0.25).eval()
    x = torch.rand(2, 3, 16, 16)
    settings = RunSettings(inference_precision="fp32", compile=True)
    nets = [settings.prepare_network(copy.deepcopy(ref), "cpu").eval() for _ in range(2)]
    with pytest.warns(RuntimeWarning, match="torch.compile failed, networks run eagerly") as record:
        outs = [net(x) for net in nets] + [nets[0](x)]
    assert len([w for w in record if "torch.compile" in str(w.message)]) == 1, "warned once"
    assert len(calls) == 1, "after a failure no other network tries to compile"
    with torch.no_grad():
        expected = ref(x)
    assert all(torch.allclose(o, expected, atol=1e-5) for o in outs)


def test_bad_input_is_not_blamed_on_the_compiler(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **k: fn)
    settings = RunSettings(compile=True)
    net = settings.prepare_network(IMUNet(2, 3, 1, alpha=0.25), "cpu")
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 5, 16, 16))  # 5 channels into a 3-channel network
    assert not settings._compile_failed


# ------------------------------------------------------------------------------------- bf16 pseudo-labels
def test_bf16_pseudo_labels_agree_with_fp32():
    """Three seeded teachers (one base network, weights perturbed by 5%, logits scaled to std 4) on fixed
    smooth images: teacher masks and pseudo-labels agree on >= 99% of the pixels, the IM on >= 98%."""
    torch.manual_seed(0)
    base = IMUNet(2, 3, 1, alpha=0.25).eval()
    x = _smooth_images(8, size=32, seed=1)
    with torch.no_grad():
        z = base(x)
        base.head.weight.mul_(4 / z.std())
        base.head.bias.sub_(4 * z.mean() / z.std())
    teachers = []
    for k in range(3):
        net, g = copy.deepcopy(base), torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
        teachers.append(net)
    strategy = InconsistencyMask()

    def pseudo_labels(settings: RunSettings):
        nets = [settings.prepare_network(copy.deepcopy(t), "cpu").eval() for t in teachers]
        probs = strategy.activation(ensemble_predict(nets, x), channel_dim=2)
        return probs, strategy(probs)

    p32, r32 = pseudo_labels(RunSettings(inference_precision="fp32"))
    p16, r16 = pseudo_labels(RunSettings(inference_precision="bf16"))
    if BF16 is not None:
        assert not torch.equal(p32, p16), "bf16 really ran"
    assert r32.label.float().mean() > 0.05 and r32.im.float().mean() > 0.05, "a non-trivial case"
    assert ((p32 > 0.5) == (p16 > 0.5)).float().mean() >= 0.99
    assert (r32.label == r16.label).float().mean() >= 0.99
    assert (r32.im == r16.im).float().mean() >= 0.98


# ------------------------------------------------------------------------------------- a whole study
def test_study_runs_every_forward_pass_with_the_policy(make_study, tiny_data, tmp_path, monkeypatch):
    from monai_im.methods import Method

    real_predict = Method.predict

    def predict_in_phase(self, *args, **kwargs):
        _PHASE[0] = "pseudo"
        try:
            return real_predict(self, *args, **kwargs)
        finally:
            _PHASE[0] = "eval"

    monkeypatch.setattr(Method, "predict", predict_in_phase)
    records: list[dict] = []
    settings = RunSettings(precision="bf16", inference_precision="bf16", channels_last=True)
    study = make_study(
        tiny_data,
        tmp_path / "study",
        network=lambda: SpyNet(records),
        num_generations=1,
        run_settings=settings,
    )
    study.run()
    phases = {r["phase"] for r in records}
    assert phases == {"train", "eval", "pseudo"}, phases  # training, validation/test, pseudo-labelling
    for rec in records:
        expected = settings.dtype("cpu", training=rec["training"])
        assert rec["autocast"] == expected, rec
        assert rec["channels_last"] and rec["weights_channels_last"], rec


_FAULTS_SCRIPT = """
import resource, sys, torch
import monai_im.runtime.acceleration as acc
if sys.argv[1] == "reuse":
    assert acc.reuse_freed_cpu_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 << 20)  # 64 MiB: above glibc's default mmap threshold
start = faults()
for _ in range(20):
    x = torch.ones(16 << 20)  # allocated, touched, freed
    del x
print(faults() - start)
"""


def _glibc() -> bool:
    import ctypes
    import sys

    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not _glibc(), reason="the C allocator setting exists on Linux with glibc only")
def test_reused_cpu_memory_is_not_faulted_in_again():
    """A 64 MiB tensor allocated and freed twenty times: glibc maps each afresh by default (16,384 page
    faults of 4 KiB pages); with the setting the freed block is reused and its pages stay mapped (at most
    the first allocations fault)."""
    import subprocess
    import sys

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    default, reused = faults("default"), faults("reuse")
    import resource

    pages = (64 << 20) // resource.getpagesize()
    assert default > 16 * pages, default  # (nearly) every allocation faulted its pages in
    assert reused < 2.5 * pages, (reused, default)


def test_preparing_for_cpu_turns_memory_reuse_on_unless_asked_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(acc, "reuse_freed_cpu_memory", lambda: calls.append(1) or True)
    RunSettings().prepare_network(IMUNet(2, 1, 1, alpha=0.25), "cpu")
    assert calls == [1]
    RunSettings(reuse_cpu_memory=False).prepare_network(IMUNet(2, 1, 1, alpha=0.25), "cpu")
    RunSettings().prepare_network(IMUNet(2, 1, 1, alpha=0.25), "meta")
    assert calls == [1], "neither when switched off nor for another device"
    assert RunSettings().describe("cpu")["reuse_cpu_memory"] is True
    assert RunSettings(reuse_cpu_memory=False).describe("cpu")["reuse_cpu_memory"] is False
    with pytest.raises(ValueError, match="reuse_cpu_memory must be true or false"):
        RunSettings(reuse_cpu_memory="yes")


# ------------------------------------------------------------------------------------- why the forward pass
def test_monai_engines_cannot_autocast_on_cpu_so_the_network_carries_the_policy():
    """The reason given in the module docstring: MONAI's evaluator autocasts as "cuda" only. If this fails,
    MONAI learned CPU autocast and the engines' ``amp`` arguments may replace the patched forward pass."""
    from monai.engines import SupervisedEvaluator

    seen: list[torch.dtype] = []
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    net[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))  # inside the network
    data = [{"image": torch.rand(1, 1, 4, 4), "label": torch.zeros(1, 1, 4, 4)}]

    def evaluator(**amp) -> SupervisedEvaluator:
        return SupervisedEvaluator(device="cpu", val_data_loader=data, network=net, decollate=False, **amp)

    with pytest.raises(TypeError, match="device_type"):
        evaluator(amp=True, amp_kwargs={"device_type": "cpu", "dtype": torch.bfloat16}).run()
    with pytest.warns(UserWarning, match="CUDA is not available"):
        evaluator(amp=True, amp_kwargs={"dtype": torch.bfloat16}).run()
    assert seen == [torch.float32]  # MONAI's amp did not change the CPU forward pass
    if BF16 is not None:  # the prepared network does run its inference policy inside the same evaluator
        seen.clear()
        RunSettings(inference_precision="bf16").prepare_network(net, "cpu")
        evaluator().run()
        assert seen == [torch.bfloat16]
