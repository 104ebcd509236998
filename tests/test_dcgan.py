"""dcgan.py: the paper's architecture at every size, its init, the linear variant, and the run contract."""

import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from conftest import ROOT, count_steps, generate_with_other_statistics, run_script
from helpers_cli import error_line
from PIL import Image

import common
import dcgan

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

SMALL = ["--hidden_dim", "8", "--batch", "16", "--zdim", "16", "--device", "cpu"]


@pytest.mark.parametrize("arch", ["conv", "linear"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_shapes_and_range_for_every_size_and_channel_count(arch, channels, size):
    torch.manual_seed(0)
    G = dcgan.Generator(16, 4, size, channels, arch)
    D = dcgan.Discriminator(4, size, channels, arch)
    for z in (torch.randn(5, 16), torch.randn(5, 16, 1, 1)):
        x = G(z)
        assert x.shape == (5, channels, size, size)
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    assert isinstance(G.net[-1], nn.Tanh)
    logits = D(x)
    assert logits.shape == (5,)


def layers(net, kinds):
    return [m for m in net.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_conv_architecture_follows_the_paper(size):
    G = dcgan.Generator(100, 8, size, 3)
    D = dcgan.Discriminator(8, size, 3)
    n = size.bit_length() - 3  # 4 x 4 doubled n times is the image size
    g_convs = layers(G, nn.ConvTranspose2d)
    d_convs = layers(D, nn.Conv2d)
    assert len(g_convs) == n + 1 and len(d_convs) == n + 1
    assert not layers(G, nn.Linear) and not layers(D, nn.Linear)  # no fully connected layer
    assert not layers(D, (nn.MaxPool2d, nn.AvgPool2d))
    # G: 4 x 4 projection, then kernel 4 stride 2 padding 1; channels halve toward the image
    assert (g_convs[0].kernel_size, g_convs[0].stride, g_convs[0].padding) == ((4, 4), (1, 1), (0, 0))
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in g_convs[1:])
    assert [c.out_channels for c in g_convs] == [8 * 2 ** (n - 1 - i) for i in range(n)] + [3]
    assert [c.in_channels for c in d_convs] == [3] + [8 * 2**i for i in range(n)]
    assert all(c.stride == (2, 2) for c in d_convs[:-1]) and d_convs[-1].out_channels == 1
    # BatchNorm after every G layer but the output; in D after every layer but the first and the last
    seq = list(G.net)
    for conv in g_convs[:-1]:
        after = seq[seq.index(conv) + 1 : seq.index(conv) + 3]
        assert isinstance(after[0], nn.BatchNorm2d) and isinstance(after[1], nn.ReLU)
    assert isinstance(seq[seq.index(g_convs[-1]) + 1], nn.Tanh)
    seq = list(D.net)
    assert isinstance(seq[1], nn.LeakyReLU) and seq[1].negative_slope == 0.2
    for conv in d_convs[1:-1]:
        after = seq[seq.index(conv) + 1 : seq.index(conv) + 3]
        assert isinstance(after[0], nn.BatchNorm2d) and isinstance(after[1], nn.LeakyReLU)
    assert len(layers(D, nn.BatchNorm2d)) == n - 1 and len(layers(G, nn.BatchNorm2d)) == n


def test_hidden_dim_128_at_64px_is_the_papers_1024_channel_generator():
    G = dcgan.Generator(100, 128, 64, 3)
    assert [c.out_channels for c in layers(G, nn.ConvTranspose2d)] == [1024, 512, 256, 128, 3]


def test_weight_init_statistics():
    torch.manual_seed(0)
    G = dcgan.Generator(100, 64, 64, 3)
    D = dcgan.Discriminator(64, 64, 3)
    big = layers(G, nn.ConvTranspose2d)[1].weight  # 512 x 256 x 4 x 4: two million weights
    assert big.numel() > 1_000_000
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 5e-4
    w = layers(D, nn.Conv2d)[2].weight
    assert abs(w.std().item() - 0.02) < 1e-3
    gains = torch.cat([bn.weight for bn in layers(G, nn.BatchNorm2d) + layers(D, nn.BatchNorm2d)])
    assert abs(gains.mean().item() - 1) < 3e-3 and abs(gains.std().item() - 0.02) < 3e-3
    offsets = torch.cat([bn.bias for bn in layers(G, nn.BatchNorm2d)])
    assert torch.all(offsets == 0)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_linear_arch_shapes(size):
    G = dcgan.Generator(16, 8, size, 1, "linear")
    D = dcgan.Discriminator(8, size, 1, "linear")
    assert isinstance(G.net[0], nn.Linear) and G.net[0].out_features == widths_at_4(8, size) * 16
    g_convs = layers(G, nn.ConvTranspose2d)
    assert len(g_convs) == size.bit_length() - 3 and isinstance(G.net[-2], nn.Conv2d)
    assert G.net[-2].kernel_size == (3, 3) and G.net[-2].out_channels == 1
    d_convs = layers(D, nn.Conv2d)
    assert len(d_convs) == size.bit_length() - 2  # 4 at 32 px, as linDCGAN
    assert isinstance(D.net[-1], nn.Linear) and D.net[-1].in_features == widths_at_4(8, size) * 16
    # BatchNorm after every convolution but the first (section 3), as in the conv D
    assert isinstance(D.net[1], nn.LeakyReLU) and len(layers(D, nn.BatchNorm2d)) == len(d_convs) - 1
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 1, size, size) and D(x).shape == (3,)


def widths_at_4(h, size):
    return h * size // 8


def test_separate_real_and_fake_passes_through_d():
    torch.manual_seed(0)
    G, D = dcgan.Generator(16, 8, 16, 1), dcgan.Discriminator(8, 16, 1)
    batches = []
    D.register_forward_pre_hook(lambda m, inp: batches.append(len(inp[0])))
    opt = torch.optim.Adam(D.parameters())
    dcgan.discriminator_step(G, D, opt, torch.rand(6, 1, 16, 16) * 2 - 1, torch.randn(6, 16), NO_AUGMENT)
    assert batches == [6, 6]


def test_losses_are_the_bce_of_the_paper():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert torch.allclose(dcgan.discriminator_loss(real, fake), expected)
    assert torch.allclose(dcgan.generator_loss(fake), -torch.log(torch.sigmoid(fake)).mean())


def test_smoke_mnist_writes_the_outputs(mnist_root, tmp_path):
    out = tmp_path / "run"
    G, D = dcgan.main(["--data_root", mnist_root, "--out", str(out), "--epochs", "2", *SMALL])
    assert G.image_shape == (1, 32, 32)
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "interpolation.png"):
        assert (out / name).is_file(), name
    grids = sorted((out / "samples").glob("epoch_*.png"))
    assert [p.name for p in grids] == ["epoch_0001.png", "epoch_0002.png"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["script"] == "dcgan.py" and ckpt["step"] == 2 * (120 // 16)
    assert {"G", "D", "opt_g", "opt_d", "fixed_z"} <= set(ckpt) and ckpt["channels"] == 1
    assert "cuda" not in ckpt["rng"]  # only the training device's generator is saved


@pytest.mark.parametrize("dataset", ["celeba", "folder"])
def test_smoke_image_folders_default_to_64px(dataset, celeba_root, folder_root, tmp_path):
    root = celeba_root if dataset == "celeba" else folder_root
    args = ["--dataset", dataset, "--data_root", root, "--out", str(tmp_path), "--max_steps", "1"]
    args += ["--batch", "4", "--hidden_dim", "4", "--zdim", "8", "--workers", "0", "--device", "cpu"]
    G, D = dcgan.main(args)
    assert G.image_shape == (3, 64, 64)
    assert Image.open(tmp_path / "samples" / "step_000001.png").size == (8 * 66 + 2, 8 * 66 + 2)


def assert_same_weights(*pairs):
    for one, two in pairs:
        for (name, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_critic_repeats_d_steps_per_generator_step_across_epoch_boundaries(mnist_root, tmp_path, monkeypatch):
    # 120 images, batch 16: 7 batches an epoch, so 5 x 3 D steps cross two epoch ends. --no-quality: the
    # quality figure's classifier, trained on first use, would add optimizer steps of its own
    argv = ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(tmp_path), "--no-quality"]
    order, drawn = count_steps(dcgan.main, [*argv, "--critic_repeats", "3", "--max_steps", "5"], monkeypatch)
    assert order == ["D", "D", "D", "G"] * 5
    assert drawn == [0] * 7 + [1] * 7 + [2]  # a fresh real batch for every D step


def test_resume_is_exact(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--log_every", "1"]
    G1, D1 = dcgan.main([*base, "--out", str(tmp_path / "a"), "--max_steps", "4"])
    dcgan.main([*base, "--out", str(tmp_path / "b"), "--max_steps", "2"])
    G2, D2 = dcgan.main(
        ["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--device", "cpu", "--max_steps", "4"]
    )
    assert_same_weights((G1, G2), (D1, D2))
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_resume_is_exact_on_an_image_folder(folder_root, tmp_path):
    """The DataLoader path too: its worker seed must not come from (and shift) the global RNG."""
    base = ["--dataset", "folder", "--data_root", folder_root, "--workers", "0", *SMALL, "--batch", "4"]
    base += ["--image_size", "16", "--log_every", "1"]
    G1, D1 = dcgan.main([*base, "--out", str(tmp_path / "a"), "--max_steps", "4"])
    dcgan.main([*base, "--out", str(tmp_path / "b"), "--max_steps", "2"])
    G2, D2 = dcgan.main(
        ["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--device", "cpu", "--workers", "0"]
        + ["--max_steps", "4"]  # --workers is this run's, not the checkpoint's
    )
    assert_same_weights((G1, G2), (D1, D2))


def test_beta1_given_with_resume_is_the_one_the_optimizers_use(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(tmp_path)]
    dcgan.main([*base, "--max_steps", "1"])
    dcgan.main(
        ["--resume", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--beta1", "0.9", "--max_steps", "2"]
    )
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["args"]["beta1"] == 0.9
    for opt in ("opt_g", "opt_d"):
        assert [g["betas"] for g in ckpt[opt]["param_groups"]] == [(0.9, 0.999)], opt


def test_generate_writes_n_pngs(mnist_root, tmp_path):
    dcgan.main(["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--max_steps", "1"])
    dcgan.main(["--resume", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--generate", "7"])
    files = sorted((tmp_path / "generated").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(7)]
    assert all(Image.open(f).size == (32, 32) for f in files)


@pytest.mark.parametrize("size", ["48", "100", "8"])
def test_unsupported_image_size_is_refused(size, capsys):
    with pytest.raises(SystemExit) as e:
        dcgan.main(["--image_size", size, "--max_steps", "1", "--device", "cpu"])
    assert e.value.code == 2
    assert "power of two" in error_line(capsys.readouterr().err, f"--image_size {size}")


def test_checkpoint_with_other_shapes_is_refused(mnist_root, tmp_path):
    dcgan.main(
        ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(tmp_path), "--max_steps", "1"]
    )
    ckpt = str(tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit) as e:
        dcgan.main(["--resume", ckpt, "--device", "cpu", "--arch", "linear"])
    assert "--arch conv" in str(e.value) and "--arch linear" in str(e.value) and "dcgan.py" in str(e.value)
    with pytest.raises(SystemExit) as e:
        dcgan.main(["--resume", ckpt, "--device", "cpu", "--image_size", "32"])
    assert "--image_size 16" in str(e.value)


def test_checkpoint_from_another_script_is_refused(mnist_root, tmp_path):
    import gan_mnist

    other = ["--data_root", mnist_root, "--out", str(tmp_path), "--max_steps", "1", "--hidden_dim", "8"]
    gan_mnist.main([*other, "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        dcgan.main(["--resume", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--max_steps", "2"])
    assert "written by gan_mnist.py" in str(e.value) and "not by dcgan.py" in str(e.value)
    assert "--hidden_dim 8" in str(e.value)


def test_command_line_offline_missing_data_is_one_line(tmp_path):
    result = run_script(
        "dcgan.py", ["--data_root", str(tmp_path / "nothing"), "--max_steps", "1", "--device", "cpu"]
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "MNIST" in result.stderr


def test_ctrl_c_saves_checkpoint_and_plots(mnist_root, tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, str(ROOT / "dcgan.py"), "--data_root", mnist_root, "--out", str(out), *SMALL]
    proc = subprocess.Popen(
        [*cmd, "--image_size", "16", "--epochs", "100000", "--log_every", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (out / "log.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Ctrl-C" in stdout and "Traceback" not in stderr
    stopped = int(re.search(r"stopped at step (\d+)", stdout).group(1))
    assert stopped >= 1 and int(common.read_log(out)[-1]["step"]) == stopped  # every step logged
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == stopped  # not an epoch end's
    assert (out / "losses.png").is_file() and (out / "progress.gif").is_file()


def test_samples_come_from_the_average_of_g_and_both_are_saved(mnist_root, tmp_path):
    out = tmp_path / "r"
    base = ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(out)]
    G, _ = dcgan.main([*base, "--max_steps", "3", "--ema", "0.5"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in ckpt["G"].items())  # the trained G
    average = dcgan.Generator(16, 8, 16, 1)
    average.load_state_dict(ckpt["G_ema"])
    assert not all(torch.equal(v, ckpt["G"][k]) for k, v in ckpt["G_ema"].items())
    dcgan.main(["--resume", str(out / "checkpoint.pt"), "--generate", "4", "--device", "cpu"])
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    with common.own_statistics([average], 16, torch.device("cpu"), seed=3):  # --seed 0, + 3
        common.save_pngs(dcgan.sample(average, z), tmp_path / "expected")
    common.save_pngs(dcgan.sample(average, z), tmp_path / "copied")  # the statistics copied from G
    for i in range(4):
        name = f"{i:06d}.png"
        assert (out / "generated" / name).read_bytes() == (tmp_path / "expected" / name).read_bytes()
    assert any(
        (out / "generated" / f"{i:06d}.png").read_bytes()
        != (tmp_path / "copied" / f"{i:06d}.png").read_bytes()
        for i in range(4)
    )


@pytest.mark.parametrize("stop", [["--max_steps", "3"], ["--epochs", "1"]])  # mid-epoch, an epoch's end
def test_the_last_grid_samples_the_average_with_its_own_statistics(mnist_root, tmp_path, stop):
    out = tmp_path / "r"
    dcgan.main(["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(out), *stop])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    average = dcgan.Generator(16, 8, 16, 1).to(
        memory_format=common.conv_memory_format(torch.device("cpu"), True, None)
    )
    average.load_state_dict(ckpt["G_ema"])  # in the run's memory format: the same arithmetic
    with common.own_statistics([average], 16, torch.device("cpu"), seed=3):
        common.save_grid(dcgan.sample(average, ckpt["fixed_z"]), tmp_path / "expected.png")
    last = max((out / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime)
    assert last.read_bytes() == (tmp_path / "expected.png").read_bytes(), last.name


def test_generate_recomputes_the_averages_batchnorm_statistics_whatever_the_checkpoint_holds(
    mnist_root, tmp_path
):
    """--generate samples G_ema with statistics of its own: a checkpoint whose G_ema holds other
    BatchNorm statistics (here absurd ones) gives the same images."""
    out = tmp_path / "r"
    dcgan.main(
        ["--data_root", mnist_root, *SMALL, "--image_size", "16", "--out", str(out), "--max_steps", "3"]
    )
    a, b = generate_with_other_statistics(dcgan.main, out / "checkpoint.pt", tmp_path, 4)
    assert a == b


@pytest.mark.parametrize("flags, shifted", [((), "a quarter"), (("--augment", "none"), "none")])
def test_by_default_a_quarter_of_the_real_images_d_sees_are_shifted(flags, shifted, mnist_root, tmp_path):
    """The default (--augment translation --augment_p 0.25): a shifted image has a border row or column
    of zeros (a resized real digit has none). Of 2 x 120 real images, each shifted with probability
    1/4 (a draw of no shift, 1 in 81, leaves one as it was): some, well under half; with
    --augment none, none."""
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, inp: seen.append(inp[0].detach().clone()) if isinstance(m, dcgan.Discriminator) else None
    )
    argv = ["--data_root", mnist_root, "--out", str(tmp_path / "r"), "--no-quality", *SMALL]
    try:
        dcgan.main([*argv, "--batch", "120", "--max_steps", "2", *flags])
    finally:
        hook.remove()
    assert len(seen) == 6  # each step: D(real), D(fake) in D's step, D(fake) in G's step
    real = torch.cat(seen[0::3])[:, 0]
    zero_rows = (real == 0).all(2)  # n x 32: rows that are all zeros
    zero_cols = (real == 0).all(1)
    edge = zero_rows[:, [0, -1]].any(1) | zero_cols[:, [0, -1]].any(1)
    n = int(edge.sum())
    if shifted == "none":
        assert n == 0 and not (real == 0).flatten(1).all(1).any()
    else:
        assert 30 <= n <= 90, n  # 1/4 of 240 is 60
