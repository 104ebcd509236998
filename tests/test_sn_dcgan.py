"""sn_dcgan.py: spectral normalization on every layer of D and no BatchNorm there, the two losses,
the DCGAN optimizer, and the contract (smoke, resume, --generate, bad flags)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import count_steps
from helpers_cli import error_line
from PIL import Image
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

import common
import sn_dcgan

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

CPU = torch.device("cpu")
TINY = ["--hidden_dim", "8", "--batch", "16", "--image_size", "16", "--zdim", "8", "--device", "cpu"]


def tiny(mnist_root, out, *extra):
    return ["--data_root", mnist_root, "--out", str(out), *TINY, *extra]


def resume(checkpoint, *extra):
    return sn_dcgan.main(["--resume", str(checkpoint), "--device", "cpu", *extra])


def weighted_layers(D):
    return [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("size", [16, 32, 64])
def test_every_layer_of_d_is_spectrally_normalized_and_there_is_no_batchnorm(size):
    D = sn_dcgan.Discriminator(8, size, 3)
    layers = weighted_layers(D)
    assert len(layers) == int(torch.log2(torch.tensor(size))) - 1  # the strided convs and the final layer
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert isinstance(layers[-1], nn.Linear)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())
    x = torch.randn(4, 3, size, size)
    D.eval()  # each sample's score is its own: no statistic of the batch enters it
    torch.testing.assert_close(D(x[:1]), D(x)[:1])


def test_singular_values_are_near_one_after_training(mnist_root, tmp_path):
    _, D = sn_dcgan.main(tiny(mnist_root, tmp_path, "--max_steps", "6", "--loss", "hinge", "--lr", "0.01"))
    D.eval()  # read W / sigma with the power iteration's current u, v, without advancing it
    raw_norms = []
    with torch.no_grad():
        for m in weighted_layers(D):
            w, original = m.weight, m.parametrizations.weight.original
            sigma = torch.linalg.matrix_norm(w.reshape(len(w), -1), ord=2)
            assert abs(sigma.item() - 1) < 0.05, m
            raw_norms.append(torch.linalg.matrix_norm(original.reshape(len(original), -1), ord=2).item())
    assert max(abs(r - 1) for r in raw_norms) > 0.2  # the raw weights alone are not of norm 1


class AutocastAtEachCall(TorchFunctionMode):
    """Records, for each torch function called, whether CPU autocast was on when it ran."""

    def __init__(self):
        super().__init__()
        self.enabled = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.enabled.setdefault(func.__name__, set()).add(torch.is_autocast_enabled("cpu"))
        return func(*args, **(kwargs or {}))


def test_power_iteration_and_sigma_stay_float32_under_amps_autocast():
    torch.manual_seed(0)
    D = sn_dcgan.Discriminator(8, 16, 1)
    plain = copy.deepcopy(D)
    x = torch.randn(4, 1, 16, 16)
    with AutocastAtEachCall() as calls:
        logits = common.Autocast(D, "cpu", torch.bfloat16)(x)  # what run.fast(D) is under --amp
    plain(x)
    assert calls.enabled["conv2d"] == {True}  # the convolutions did run under autocast
    assert calls.enabled["mv"] == calls.enabled["vdot"] == {False}  # W v and u^T W v did not
    assert logits.dtype == torch.float32
    for m, p in zip(weighted_layers(D), weighted_layers(plain)):  # u, v advanced as in float32
        sn, sn_plain = m.parametrizations.weight[0], p.parametrizations.weight[0]
        assert sn._u.dtype == sn._v.dtype == torch.float32
        assert torch.equal(sn._u, sn_plain._u) and torch.equal(sn._v, sn_plain._v)


def test_losses_bce_and_hinge():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert sn_dcgan.discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.25 + 0.5)
    assert sn_dcgan.generator_loss(fake, "hinge").item() == pytest.approx(1.0)
    bce = F.binary_cross_entropy_with_logits
    expected = bce(real, torch.ones(2)) + bce(fake, torch.zeros(2))
    torch.testing.assert_close(sn_dcgan.discriminator_loss(real, fake, "bce"), expected)
    torch.testing.assert_close(sn_dcgan.generator_loss(fake, "bce"), bce(fake, torch.ones(2)))


def test_defaults_are_dcgans():
    args = common.parse_args(sn_dcgan.build_parser(), [])
    assert (args.loss, args.critic_repeats, args.batch, args.image_size) == ("bce", 1, 64, 32)
    args.hidden_dim = 8
    *_, opt_g, opt_d = sn_dcgan.build(args, 1, CPU)
    for opt in (opt_g, opt_d):
        assert isinstance(opt, torch.optim.Adam)
        assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)


def test_generator_step_leaves_d_unchanged():
    torch.manual_seed(0)
    G, D = sn_dcgan.Generator(8, 8, 16, 1), sn_dcgan.Discriminator(8, 16, 1)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    d_before = [p.detach().clone() for p in D.parameters()]
    g_before = [p.detach().clone() for p in G.parameters()]
    sn_dcgan.g_step(G, D, opt_g, torch.randn(16, 8), "bce", NO_AUGMENT)
    assert all(torch.equal(a, b) for a, b in zip(d_before, D.parameters()))
    assert all(p.grad is None and p.requires_grad for p in D.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters()))


def test_critic_repeats_d_steps_per_generator_step_across_epoch_boundaries(mnist_root, tmp_path, monkeypatch):
    # 120 images, batch 16: 7 batches an epoch; 8 x 2 D steps cross two epoch ends. --no-quality: the
    # quality figure's classifier, trained on first use, would add optimizer steps of its own
    argv = tiny(mnist_root, tmp_path, "--no-quality", "--critic_repeats", "2", "--max_steps", "8")
    order, drawn = count_steps(sn_dcgan.main, argv, monkeypatch)
    assert order == ["D", "D", "G"] * 8
    assert drawn == [0] * 7 + [1] * 7 + [2] * 2


def test_smoke_main_writes_the_run_folder(mnist_root, tmp_path):
    sn_dcgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "interpolation.png"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "samples").glob("*.png"))
    assert {"loss_d", "loss_g"} <= set(common.read_log(tmp_path)[-1])


def test_optimizer_flags_given_with_resume_win_over_the_saved_ones(mnist_root, tmp_path):
    sn_dcgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    flags = ["--lr", "0.003", "--beta1", "0.2", "--beta2", "0.9"]
    resume(tmp_path / "checkpoint.pt", "--max_steps", "2", *flags)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and (ckpt["args"]["lr"], ckpt["args"]["beta1"]) == (0.003, 0.2)
    groups = [g for k in ("opt_g", "opt_d") for g in ckpt[k]["param_groups"]]
    assert [(g["lr"], g["betas"]) for g in groups] == [(0.003, (0.2, 0.9))] * 2


def test_generate_writes_n_pngs(mnist_root, tmp_path):
    sn_dcgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1"))
    resume(tmp_path / "checkpoint.pt", "--generate", "4")
    files = sorted((tmp_path / "generated").glob("*.png"))
    assert len(files) == 4 and Image.open(files[0]).size == (16, 16)


def test_checkpoint_with_other_shapes_is_refused(mnist_root, tmp_path):
    sn_dcgan.main(tiny(mnist_root, tmp_path, "--max_steps", "1", "--no-quality"))
    made_with = "--dataset mnist --image_size 16 --zdim 8 --hidden_dim 8"  # TINY's shapes
    for flag, value in (("--hidden_dim", "16"), ("--image_size", "32"), ("--zdim", "16")):
        with pytest.raises(SystemExit) as e:
            resume(tmp_path / "checkpoint.pt", flag, value)
        made, asked = error_line(e.value, flag).split(";")  # common.fail's one line
        assert made.endswith(f" was made by sn_dcgan.py with {made_with}")
        assert asked == f" this run asks for {flag} {value}"
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 1  # left as it was


@pytest.mark.parametrize("argv", [["--image_size", "48"], ["--c_lambda", "10"], ["--loss", "wasserstein"]])
def test_refuses_bad_or_foreign_flags(argv, capsys):
    with pytest.raises(SystemExit) as e:
        sn_dcgan.main(argv)
    assert e.value.code == 2
    error_line(capsys.readouterr().err, argv[0])


def test_help_says_what_an_epoch_and_a_generator_step_are(capsys):
    with pytest.raises(SystemExit):
        sn_dcgan.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "one pass of the real data through the critic" in text
    assert "counted across epoch boundaries" in text and "--c_lambda" not in text
