"""The speed options on every image script: --amp, --compile, --deterministic, CUDA backends.

The GPU paths (cudnn.benchmark, channels_last) cannot run here; what is tested is that they stay
off on CPU, that --amp trains with finite float32 losses, that the gradient penalty under autocast
matches float32, and that a compiled run saves the same checkpoint keys as an eager one."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import common
import wgan_gp

SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
TINY = ["--hidden_dim", "4", "--batch", "8", "--zdim", "8", "--device", "cpu", "--log_every", "1"]
# bfloat16 keeps 8 significant bits: one rounding is a relative error up to 2^-8 = 0.4%; a norm, a
# product of two such and a sum of them stay well inside 2%
BF16_RTOL = 2e-2


def image_args(name):
    return ["--image_size", "28"] if name == "gan_mnist" else ["--image_size", "16"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_speed_flags_are_off_by_default_and_can_be_turned_on(name):
    parser = importlib.import_module(name).build_parser()
    args = parser.parse_args([])
    assert (args.amp, args.compile, args.deterministic) == (None, False, False)  # amp None: where native
    args = parser.parse_args(["--amp", "--compile", "--deterministic"])
    assert (args.amp, args.compile, args.deterministic) == (True, True, True)
    assert parser.parse_args(["--amp", "--no-amp"]).amp is False  # a resumed --amp run can drop it
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "bfloat16" in text and "bf16 support" in text and "torch.compile" in text
    if name == "wgan_gp":
        assert "critic stays eager" in text and "double backward" in text


def test_cuda_settings_leave_cpu_alone():
    args = argparse_namespace(deterministic=False)
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled()
    assert common.setup_backends(torch.device("cpu"), args) is torch.channels_last  # conv nets: NHWC
    assert common.setup_backends(torch.device("cpu"), args, conv=False) is torch.contiguous_format
    assert common.setup_backends(torch.device("cpu"), argparse_namespace(deterministic=True)) is (
        torch.channels_last
    )
    assert torch.backends.cudnn.benchmark == benchmark
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def argparse_namespace(**kw):
    import argparse

    return argparse.Namespace(**kw)


@pytest.mark.parametrize("name", SCRIPTS)
def test_amp_trains_with_finite_float32_losses(name, mnist_root, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    extra = ["--classes", "1,4"] if name == "dcgan_classwise" else []
    dtypes = set()  # what the convolutions and linear layers really computed in
    loss_dtypes, real_add = set(), common.RunLog.add  # what the script handed the log, before its .float()

    def add(self, images, step=None, **losses):
        loss_dtypes.update(v.dtype for v in losses.values())
        return real_add(self, images, step, **losses)

    monkeypatch.setattr(common.RunLog, "add", add)

    def record(module, inputs, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        module.main(
            ["--data_root", mnist_root, *TINY, *image_args(name), *extra]
            + ["--amp", "--max_steps", "2", "--out", str(tmp_path)]
        )
    finally:
        hook.remove()
    assert torch.bfloat16 in dtypes  # --amp really ran the forward passes in bfloat16
    assert loss_dtypes == {torch.float32}  # and handed float32 outputs to float32 losses
    rows = common.read_log(tmp_path)
    losses = [v for r in rows for k, v in r.items() if k.startswith(("loss", "wasserstein", "penalty"))]
    assert len(rows) == 2 and losses and all(math.isfinite(v) for v in losses)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["args"]["amp"] is True
    # the networks themselves stay float32: autocast changes the arithmetic, not the weights
    if name == "dcgan_classwise":  # each pair's nets are in the run's checkpoint as G_<class>
        ckpt = {"G": ckpt["G_1"]}
    assert all(t.dtype == torch.float32 for t in ckpt["G"].values() if t.is_floating_point())


class LinearCritic(torch.nn.Module):
    """f(x) = w . x through F.linear, which CPU autocast runs in bfloat16; records the dtype it ran in."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        scores = F.linear(x.flatten(1), self.w.flatten()[None])
        self.dtype = scores.dtype
        return scores.view(-1)


@pytest.mark.parametrize("norm", [0.25, 3.0])
def test_penalty_under_amp_is_lambda_times_norm_minus_one_squared_for_a_linear_critic(norm):
    torch.manual_seed(0)
    w = torch.randn(3, 8, 8)
    critic = LinearCritic(w / w.norm() * norm)
    real, fake = torch.randn(2, 16, 3, 8, 8)
    penalty = wgan_gp.gradient_penalty(common.Autocast(critic, "cpu", torch.bfloat16), real, fake, 10.0)
    assert critic.dtype == torch.bfloat16  # the critic really ran under autocast
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, torch.tensor(10 * (norm - 1) ** 2), rtol=BF16_RTOL, atol=0)
    # still a function of w, differentiated through the penalty (create_graph=True)
    penalty.backward()
    expected = 10 * 2 * (norm - 1) * critic.w.detach() / norm
    torch.testing.assert_close(critic.w.grad, expected, rtol=BF16_RTOL, atol=BF16_RTOL * expected.abs().max())


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_penalty_of_the_real_critic_under_amp_matches_float32(norm):
    torch.manual_seed(0)
    critic = wgan_gp.Critic(8, 16, 1, norm)
    real, fake = torch.rand(2, 16, 1, 16, 16) * 2 - 1
    eps = torch.rand(16, 1, 1, 1)
    exact = wgan_gp.gradient_penalty(critic, real, fake, 10.0, eps=eps)
    fast = wgan_gp.gradient_penalty(common.Autocast(critic, "cpu", torch.bfloat16), real, fake, 10.0, eps=eps)
    assert fast.dtype == torch.float32 and exact.item() > 1e-3  # a penalty far enough from 0 to compare
    torch.testing.assert_close(fast, exact, rtol=BF16_RTOL, atol=0)


def test_compiled_run_is_finite_and_saves_the_eager_modules_keys(mnist_root, tmp_path, monkeypatch):
    """dcgan, G and D both compiled (BatchNorm, D called twice before one backward); every script goes
    through the same Run.fast. One script only: a first compile takes 20-30 s on 2 cores."""
    name = "dcgan"
    module = importlib.import_module(name)
    common_args = ["--data_root", mnist_root, *TINY, *image_args(name), "--max_steps", "2"]
    compiled_nets, real_compile = [], torch.compile

    def counting_compile(model, *args, **kwargs):  # torch.compile itself, counted
        compiled_nets.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", counting_compile)
    module.main([*common_args, "--out", str(tmp_path / "eager")])
    assert compiled_nets == []
    module.main([*common_args, "--compile", "--out", str(tmp_path / "compiled")])
    assert sorted(compiled_nets) == ["Discriminator", "Generator"]
    rows = common.read_log(tmp_path / "compiled")
    assert len(rows) == 2 and all(math.isfinite(v) for r in rows for v in r.values())
    eager = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=False)
    compiled = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)
    for net in ("G", "D", "opt_g", "opt_d"):
        assert list(compiled[net]) == list(eager[net])
    assert not any("_orig_mod" in k for k in [*compiled["G"], *compiled["D"]])
    assert compiled["args"]["compile"] is True
