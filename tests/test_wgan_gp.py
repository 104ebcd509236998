"""wgan_gp.py: the gradient penalty on critics whose gradients are known, a critic without BatchNorm,
Algorithm 1's optimizer and schedule, and the contract (smoke, resume, --generate, bad flags)."""

import pytest
import torch
import torch.nn as nn
from conftest import count_steps, generate_with_other_statistics
from helpers_cli import error_line
from PIL import Image

import common
import wgan_gp

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

CPU = torch.device("cpu")
TINY = ["--hidden_dim", "8", "--batch", "16", "--image_size", "16", "--zdim", "8", "--device", "cpu"]


def tiny(mnist_root, out, *extra):
    return ["--data_root", mnist_root, "--out", str(out), *TINY, *extra]


class LinearCritic(nn.Module):
    """f(x) = w . x: its gradient is w at every point, so the penalty is lambda (||w|| - 1)^2."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten()


class HalfSquaredNorm(nn.Module):
    """f(x) = ||x||^2 / 2: its gradient is x itself. Keeps the points it was asked about."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return 0.5 * (x**2).flatten(1).sum(1)


@pytest.mark.parametrize("norm", [0.25, 1.0, 3.0])
def test_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared(norm):
    torch.manual_seed(0)
    w = torch.randn(3, 5, 5, dtype=torch.float64)
    critic = LinearCritic(w / w.norm() * norm)
    real, fake = torch.randn(2, 7, 3, 5, 5, dtype=torch.float64)
    penalty = wgan_gp.gradient_penalty(critic, real, fake, 10.0)
    torch.testing.assert_close(penalty, torch.tensor(10 * (norm - 1) ** 2, dtype=torch.float64))
    # create_graph=True: the penalty is a function of w, and its gradient is the analytic one
    penalty.backward()
    expected = 10 * 2 * (norm - 1) * critic.w.detach() / norm
    torch.testing.assert_close(critic.w.grad, expected)


def test_penalty_mixes_each_sample_with_its_own_eps_and_norms_per_sample():
    torch.manual_seed(1)
    critic = HalfSquaredNorm()
    real, fake = torch.randn(2, 8, 2, 4, 4, dtype=torch.float64)
    penalty = wgan_gp.gradient_penalty(critic, real, fake, 10.0)
    eps = (critic.seen - fake) / (real - fake)  # x_hat = eps x + (1 - eps) G(z), solved for eps
    per_sample = eps.flatten(1)
    # one eps per sample (N x 1 x 1 x 1): constant over channels and pixels of a sample ...
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    # ... different from sample to sample, and in [0, 1]
    assert len(torch.unique(per_sample[:, 0])) == len(real)
    assert per_sample.min() >= 0 and per_sample.max() <= 1
    # the gradient is x_hat: the norm is taken per sample over (C, H, W), then averaged
    expected = 10 * ((critic.seen.flatten(1).norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected)


def test_penalty_takes_a_given_eps():
    critic = HalfSquaredNorm()
    real, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    wgan_gp.gradient_penalty(critic, real, fake, 1.0, eps=torch.tensor([0.25, 0.75]).view(2, 1, 1, 1))
    assert critic.seen[:, 0, 0, 0].tolist() == [0.25, 0.75]


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_critic_has_no_batchnorm_and_scores_each_sample_on_its_own(norm, size):
    torch.manual_seed(0)
    critic = wgan_gp.Critic(8, size, 3, norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in critic.modules()) == (norm == "layer")
    x = torch.randn(5, 3, size, size)
    scores = critic(x)
    assert scores.shape == (5,)
    torch.testing.assert_close(critic(x[:1]), scores[:1])


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_shape_and_range(size):
    G = wgan_gp.Generator(8, 8, size, 3)
    x = G(torch.randn(4, 8))
    assert x.shape == (4, 3, size, size) and x.min() >= -1 and x.max() <= 1


def test_defaults_are_algorithm_1_but_the_learning_rate():
    args = common.parse_args(wgan_gp.build_parser(), [])
    assert (args.c_lambda, args.critic_repeats, args.batch, args.image_size) == (10.0, 5, 64, 32)
    args.hidden_dim = 8
    G, critic, opt_g, opt_c = wgan_gp.build(args, 1, CPU)
    for opt in (opt_g, opt_c):
        assert isinstance(opt, torch.optim.Adam)
        # lr 2e-4: the authors' CIFAR-10 code, the documented departure from Algorithm 1's 1e-4
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.0, 0.9)


def test_generator_step_leaves_the_critic_unchanged():
    torch.manual_seed(0)
    G, critic = wgan_gp.Generator(8, 8, 16, 1), wgan_gp.Critic(8, 16, 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
    critic_before = {k: v.clone() for k, v in critic.state_dict().items()}
    g_before = [p.detach().clone() for p in G.parameters()]
    wgan_gp.generator_step(G, critic, opt_g, torch.randn(16, 8), NO_AUGMENT)
    assert all(torch.equal(critic_before[k], v) for k, v in critic.state_dict().items())
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.requires_grad for p in critic.parameters())  # the critic trains again afterwards
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))


def test_critic_repeats_critic_steps_per_generator_step_across_epoch_boundaries(
    mnist_root, tmp_path, monkeypatch
):
    # 120 images, batch 16: 7 batches an epoch, so 5 x 3 critic steps cross two epoch ends. --no-quality: the
    # quality figure's classifier, trained on first use, would add optimizer steps of its own
    argv = tiny(mnist_root, tmp_path, "--no-quality", "--critic_repeats", "3", "--max_steps", "5")
    order, drawn = count_steps(wgan_gp.main, argv, monkeypatch)
    assert order == ["D", "D", "D", "G"] * 5
    assert drawn == [0] * 7 + [1] * 7 + [2]  # a fresh real batch for every critic step


def test_smoke_main_writes_the_run_folder(mnist_root, tmp_path):
    G, critic = wgan_gp.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    assert isinstance(critic, wgan_gp.Critic)
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "interpolation.png"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "samples").glob("*.png"))
    row = common.read_log(tmp_path)[-1]
    assert row["step"] == 1 and {"loss_c", "loss_g", "wasserstein", "penalty"} <= set(row)


def test_the_earlier_implementations_flags_work():
    old = "--epochs 100 --zdim 64 --lr 0.0002 --batch 128 --hidden_dim 64 --c_lambda 10 --critic_repeats 5"
    args = common.parse_args(wgan_gp.build_parser(), old.split())
    got = (args.epochs, args.zdim, args.lr, args.batch, args.hidden_dim, args.c_lambda, args.critic_repeats)
    assert got == (100, 64, 0.0002, 128, 64, 10.0, 5)
    torch.manual_seed(0)
    G, critic, opt_g, opt_c = wgan_gp.build(args, 1, CPU)
    assert opt_c.defaults["lr"] == 0.0002
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    z, eps = torch.randn(4, args.zdim), torch.rand(4, 1, 1, 1)
    loss, wasserstein, penalty = wgan_gp.critic_step(
        G, critic, opt_c, real, z, eps, args.c_lambda, NO_AUGMENT
    )
    assert torch.isfinite(loss) and penalty > 0
    assert G(torch.randn(2, 64)).shape == (2, 1, 32, 32)


def test_optimizer_flags_given_with_resume_are_the_ones_used_afterwards(mnist_root, tmp_path, monkeypatch):
    wgan_gp.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    used = []  # the hyperparameters each optimizer step really ran with
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]))
    )
    try:
        wgan_gp.main(
            ["--resume", str(tmp_path / "checkpoint.pt"), "--max_steps", "2", "--device", "cpu"]
            + ["--lr", "0.003", "--beta1", "0.5", "--beta2", "0.99"]
        )
    finally:
        handle.remove()
    assert used and set(used) == {(0.003, (0.5, 0.99))}
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and (ckpt["args"]["lr"], ckpt["args"]["beta1"], ckpt["args"]["beta2"]) == (
        0.003,
        0.5,
        0.99,
    )
    groups = [g for k in ("opt_g", "opt_d") for g in ckpt[k]["param_groups"]]
    assert [(g["lr"], g["betas"]) for g in groups] == [(0.003, (0.5, 0.99))] * 2


def test_generate_writes_n_pngs(mnist_root, tmp_path):
    wgan_gp.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    assert (
        wgan_gp.main(["--resume", str(tmp_path / "checkpoint.pt"), "--generate", "5", "--device", "cpu"])
        is None
    )
    files = sorted((tmp_path / "generated").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(files[0]).size == (16, 16)


def test_refuses_an_image_size_the_networks_cannot_make(mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        wgan_gp.main(tiny(mnist_root, tmp_path, "--image_size", "48"))
    assert e.value.code == 2
    assert "power of two" in error_line(capsys.readouterr().err, "--image_size 48")


def test_refuses_a_checkpoint_with_another_critic(mnist_root, tmp_path):
    wgan_gp.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    with pytest.raises(SystemExit, match="critic_norm"):
        wgan_gp.main(
            ["--resume", str(tmp_path / "checkpoint.pt"), "--critic_norm", "none", "--device", "cpu"]
        )


def test_help_says_what_an_epoch_and_a_generator_step_are(capsys):
    with pytest.raises(SystemExit):
        wgan_gp.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one pass of the real data through the critic" in text
    assert "counted across epoch boundaries" in text and "--c_lambda" in text


def test_generate_samples_the_average_on_the_statistics_copied_from_g(mnist_root, tmp_path):
    """Unlike the other image scripts, the WGANs keep G's BatchNorm statistics for their average
    (own ones scored worse): a checkpoint whose G_ema holds other statistics gives other images."""
    out = tmp_path / "r"
    wgan_gp.main(["--data_root", mnist_root, *TINY, "--out", str(out), "--max_steps", "2", "--no-quality"])
    a, b = generate_with_other_statistics(wgan_gp.main, out / "checkpoint.pt", tmp_path, 2)
    assert a != b
