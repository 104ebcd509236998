"""wgan.py: weight clipping after every critic update, RMSprop, the critic schedule (Algorithm 1 and
the authors' warm-up), and the contract (smoke, resume, --generate, bad flags)."""

from types import SimpleNamespace

import pytest
import torch
from conftest import count_steps
from helpers_cli import error_line
from PIL import Image

import common
import wgan

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

CPU = torch.device("cpu")
TINY = ["--hidden_dim", "8", "--batch", "16", "--image_size", "16", "--zdim", "8", "--device", "cpu"]


def tiny(mnist_root, out, *extra):
    return ["--data_root", mnist_root, "--out", str(out), *TINY, *extra]


def resume(checkpoint, *extra):
    return ["--resume", str(checkpoint), "--device", "cpu", *extra]


@pytest.mark.parametrize("amp", [False, True])
def test_every_critic_parameter_lies_in_minus_c_c_after_a_critic_step(amp):
    torch.manual_seed(0)
    G, critic = wgan.Generator(8, 8, 16, 1), wgan.Critic(8, 16, 1)
    with torch.no_grad():  # start far outside the box, so the step itself must clip
        for p in critic.parameters():
            p.uniform_(-1, 1)
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=5e-5)
    real = torch.rand(16, 1, 16, 16) * 2 - 1
    # under --amp the step sees the autocast wrapper train() makes; the clip must reach the critic inside
    fast = common.Autocast(critic, "cpu", torch.bfloat16) if amp else critic
    loss, wasserstein = wgan.critic_step(G, fast, opt_c, real, torch.randn(16, 8), 0.03, NO_AUGMENT)
    params = torch.cat([p.detach().flatten() for p in critic.parameters()])
    assert params.abs().max() == pytest.approx(0.03)  # BatchNorm's gain and offset included
    assert torch.isfinite(loss) and torch.equal(loss, -wasserstein) and loss.dtype == torch.float32


def test_clip_flag_bounds_the_trained_critic(mnist_root, tmp_path):
    _, critic = wgan.main(tiny(mnist_root, tmp_path, "--clip", "0.05", "--max_steps", "2"))
    params = torch.cat([p.detach().flatten() for p in critic.parameters()])
    assert params.abs().max() <= 0.05 and params.abs().max() > 0.01


def test_critic_is_a_score_with_no_sigmoid():
    torch.manual_seed(0)
    critic = wgan.Critic(8, 32, 3)
    with torch.no_grad():
        critic.net[-1].weight.mul_(1000)  # a sigmoid would squash these into (0, 1)
    scores = critic(torch.randn(8, 3, 32, 32))
    assert scores.shape == (8,) and (scores.min() < 0 or scores.max() > 1)


def test_defaults_are_the_papers_but_the_learning_rate():
    args = common.parse_args(wgan.build_parser(), [])
    assert (args.clip, args.critic_repeats, args.batch, args.image_size) == (0.01, 5, 64, 32)
    args.hidden_dim = 8
    _, critic, opt_g, opt_c = wgan.build(args, 1, CPU)
    for opt in (opt_g, opt_c):  # lr 2e-4, the documented departure from Algorithm 1's 5e-5
        assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["lr"] == 2e-4
        assert opt.defaults["momentum"] == 0
    assert max(p.abs().max() for p in critic.parameters()) <= 0.01  # starts inside the box


def test_warmup_schedule_is_the_authors():
    off = SimpleNamespace(warmup_critic=False, critic_repeats=5)
    on = SimpleNamespace(warmup_critic=True, critic_repeats=5)
    assert {wgan.critic_updates(s, off) for s in range(2000)} == {5}
    assert [wgan.critic_updates(s, on) for s in (0, 24, 25, 26, 499, 500, 501, 1000)] == [
        100,
        100,
        5,
        5,
        5,
        100,
        5,
        100,
    ]


def test_generator_steps_are_those_whose_critic_updates_fit_in_the_epochs():
    off = SimpleNamespace(warmup_critic=False, critic_repeats=5, epochs=3)
    assert wgan.generator_steps(off, 7) == 4  # 21 critic batches: 4 steps of 5, one batch left over
    on = SimpleNamespace(warmup_critic=True, critic_repeats=5, epochs=1)
    assert wgan.generator_steps(on, 2500) == 25  # the 25 warm-up steps of 100
    # steps 25..499 take 5 each (4875 batches in all), step 500 takes 100 again
    assert [wgan.generator_steps(on, n) for n in (4874, 4875, 4974, 4975)] == [499, 500, 500, 501]


def test_generator_step_leaves_the_critic_unchanged():
    torch.manual_seed(0)
    G, critic = wgan.Generator(8, 8, 16, 1), wgan.Critic(8, 16, 1)
    opt_g = torch.optim.RMSprop(G.parameters(), lr=1e-3)
    critic_before = [p.detach().clone() for p in critic.parameters()]
    g_before = [p.detach().clone() for p in G.parameters()]
    wgan.generator_step(G, critic, opt_g, torch.randn(16, 8), NO_AUGMENT)
    assert all(torch.equal(a, b) for a, b in zip(critic_before, critic.parameters()))
    assert all(p.grad is None and p.requires_grad for p in critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))


def run_counting(mnist_root, out, monkeypatch, *extra):
    # --no-quality: the quality figure's classifier, trained on first use (unless an earlier test of the
    # session did), would add optimizer steps of its own
    return count_steps(wgan.main, tiny(mnist_root, out, "--no-quality", *extra), monkeypatch)


def test_critic_repeats_critic_steps_per_generator_step_across_epoch_boundaries(
    mnist_root, tmp_path, monkeypatch
):
    # 120 images, batch 16: 7 batches an epoch, so 4 x 4 critic steps cross two epoch ends
    order, drawn = run_counting(
        mnist_root, tmp_path, monkeypatch, "--critic_repeats", "4", "--max_steps", "4"
    )
    assert order == ["D", "D", "D", "D", "G"] * 4
    assert drawn == [0] * 7 + [1] * 7 + [2] * 2  # a fresh real batch for every critic step


def test_warmup_critic_trains_the_critic_100_times_first(mnist_root, tmp_path, monkeypatch):
    order, drawn = run_counting(mnist_root, tmp_path, monkeypatch, "--warmup_critic", "--max_steps", "1")
    assert order == ["D"] * 100 + ["G"] and len(drawn) == 100


def test_smoke_main_writes_the_run_folder(mnist_root, tmp_path):
    wgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "interpolation.png"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "samples").glob("*.png"))
    row = common.read_log(tmp_path)[-1]
    assert row["step"] == 1 and {"loss_c", "loss_g", "wasserstein"} <= set(row)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert {"G", "D", "opt_g", "opt_d", "fixed_z"} <= set(ckpt) and ckpt["script"] == "wgan.py"


def test_lr_given_with_resume_wins_over_the_saved_one(mnist_root, tmp_path):
    wgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    wgan.main(resume(tmp_path / "checkpoint.pt", "--max_steps", "2", "--lr", "0.003"))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["args"]["lr"] == 0.003
    assert [g["lr"] for k in ("opt_g", "opt_d") for g in ckpt[k]["param_groups"]] == [0.003, 0.003]


def test_generate_writes_n_pngs(mnist_root, tmp_path):
    wgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    assert wgan.main(resume(tmp_path / "checkpoint.pt", "--generate", "3")) is None
    files = sorted((tmp_path / "generated").glob("*.png"))
    assert [f.name for f in files] == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(files[0]).size == (16, 16)


def test_refuses_a_checkpoint_of_another_script_or_shape(mnist_root, tmp_path):
    wgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    with pytest.raises(SystemExit, match="hidden_dim"):
        wgan.main(resume(tmp_path / "checkpoint.pt", "--hidden_dim", "16"))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    ckpt["script"] = "wgan_gp.py"
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="written by wgan_gp.py"):
        wgan.main(resume(tmp_path / "other.pt"))


@pytest.mark.parametrize("argv", [["--image_size", "48"], ["--c_lambda", "10"], ["--clip", "0"]])
def test_refuses_bad_or_foreign_flags(argv, capsys):
    with pytest.raises(SystemExit) as e:
        wgan.main([*argv, "--device", "cpu"])
    assert e.value.code == 2
    error_line(capsys.readouterr().err, argv[0])


def test_help_says_what_an_epoch_and_a_generator_step_are(capsys):
    with pytest.raises(SystemExit):
        wgan.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one pass of the real data through the critic" in text
    assert "counted across epoch boundaries" in text and "--c_lambda" not in text
