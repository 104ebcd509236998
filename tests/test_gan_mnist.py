"""gan_mnist.py: what makes it Goodfellow et al.'s GAN, and the contract (smoke, resume, generate, faults)."""

import os

import numpy as np
import pytest
import torch
from conftest import bar_class, count_steps, run_script
from helpers_cli import error_line
from PIL import Image

import common
import gan_mnist

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

TINY = ["--hidden_dim", "8", "--batch", "16", "--zdim", "8", "--device", "cpu", "--log_every", "1"]


def run(mnist_root, out, *extra):
    return gan_mnist.main(["--data_root", mnist_root, "--out", str(out), *TINY, *extra])


def test_smoke_one_batch_writes_every_output(mnist_root, tmp_path):
    G, D = run(mnist_root, tmp_path / "r", "--max_steps", "1")
    files = {p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*")}
    for f in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "interpolation.png"):
        assert f in files
    assert any(f.startswith("samples/") and f.endswith(".png") for f in files)
    with open(tmp_path / "r" / "log.csv") as f:
        header = f.readline().strip().split(",")
    assert header[:4] == ["step", "epoch", "loss_d", "loss_g"] and "images_per_s" in header
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 1


def test_samples_are_images_in_tanh_range(mnist_root, tmp_path):
    G, _ = run(mnist_root, tmp_path / "r", "--max_steps", "1")
    x = G(torch.randn(5, 8))
    assert x.shape == (5, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert isinstance(G.net[-1], torch.nn.Tanh)


def nets(h=8):
    shape = torch.Size((1, 28, 28))
    G, D = gan_mnist.Generator(8, [h, 2 * h], shape), gan_mnist.Discriminator(shape, [2 * h, h], 0.3)
    return G, D, torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)


def test_d_step_leaves_generator_untouched():
    G, D, opt_g, opt_d = nets()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    d_before = [p.clone() for p in D.parameters()]
    gan_mnist.d_step(G, D, opt_d, torch.rand(16, 1, 28, 28) * 2 - 1, torch.randn(16, 8), NO_AUGMENT)
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert all(p.grad is None for p in G.parameters())  # the fake batch was detached
    assert any(not torch.equal(a, b) for a, b in zip(d_before, D.parameters(), strict=True))


def test_g_step_leaves_discriminator_unchanged():
    G, D, opt_g, opt_d = nets()
    before = {k: v.clone() for k, v in D.state_dict().items()}
    g_before = [p.clone() for p in G.parameters()]
    gan_mnist.g_step(G, D, opt_g, torch.randn(16, 8), "nonsaturating", NO_AUGMENT)
    assert all(torch.equal(before[k], v) for k, v in D.state_dict().items())
    assert all(p.grad is None for p in D.parameters())  # frozen: none computed (none sent under DDP)
    assert all(p.requires_grad for p in D.parameters())  # and trainable again for its own step
    assert any(not torch.equal(a, b) for a, b in zip(g_before, G.parameters(), strict=True))


def test_discriminator_outputs_logits_not_probabilities():
    _, D, _, _ = nets()
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in D.modules())
    logits = torch.tensor([-30.0, 0.0, 30.0])
    # stable where sigmoid + log would give inf
    assert torch.isfinite(gan_mnist.discriminator_loss(logits, logits))


def test_d_drops_input_pixels_as_the_authors_code_by_default():
    """mnist.yaml keeps each of D's input pixels with probability 0.8: the first Linear sees ~20% zeros."""
    args = gan_mnist.build_parser().parse_args(["--hidden_dim", "8"])
    assert args.d_input_dropout == 0.2
    D = gan_mnist.build(args, 1, torch.device("cpu"))[1]
    shape = torch.Size((1, 28, 28))
    seen = []
    D.net[1].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    D(torch.ones(64, 1, 28, 28))
    zeros = (seen[-1] == 0).float().mean().item()
    assert 0.18 < zeros < 0.22 and torch.allclose(seen[-1][seen[-1] != 0], torch.tensor(1.25))
    D.eval()  # sampling and evaluation see every pixel
    D(torch.ones(64, 1, 28, 28))
    assert torch.equal(seen[-1], torch.ones(64, 784))
    # no weights of its own: checkpoints written before it existed load unchanged
    assert D.state_dict().keys() == gan_mnist.Discriminator(shape, [32, 16, 8], 0.5).state_dict().keys()


def test_checkpoint_made_before_input_dropout_resumes_without_it(mnist_root, tmp_path):
    """Its exact continuation: a flag missing from the checkpoint takes its value from before the flag."""
    run(mnist_root, tmp_path / "r", "--max_steps", "1")
    path = tmp_path / "r" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    del ckpt["args"]["d_input_dropout"]  # as written before the flag existed
    torch.save(ckpt, path)
    parser = gan_mnist.build_parser()
    assert common.parse_args(parser, ["--resume", str(path)]).d_input_dropout == 0.0
    asked = common.parse_args(parser, ["--resume", str(path), "--d_input_dropout", "0.3"])
    assert asked.d_input_dropout == 0.3


def test_g_loss_minimax_saturates_and_nonsaturating_does_not():
    """Where D rejects the fakes (logit -8), the minimax gradient vanishes; the paper's fix does not."""
    grads = {}
    for kind in ("minimax", "nonsaturating"):
        logit = torch.tensor([-8.0], requires_grad=True)
        gan_mnist.generator_loss(logit, kind).backward()
        grads[kind] = logit.grad.item()
    assert grads["minimax"] == pytest.approx(-torch.sigmoid(torch.tensor(-8.0)).item(), rel=1e-5)
    assert grads["nonsaturating"] == pytest.approx(-(1 - torch.sigmoid(torch.tensor(-8.0)).item()), rel=1e-5)
    assert abs(grads["nonsaturating"]) > 1000 * abs(grads["minimax"])


def test_g_loss_flag_changes_training(mnist_root, tmp_path):
    G1, _ = run(mnist_root, tmp_path / "a", "--max_steps", "2")
    G2, _ = run(mnist_root, tmp_path / "b", "--max_steps", "2", "--g_loss", "minimax")
    assert any(not torch.equal(a, b) for a, b in zip(G1.parameters(), G2.parameters(), strict=True))


def test_digit_keeps_only_that_class(mnist_root, tmp_path):
    """The real images D sees (the ones on the uint8 grid; fakes never are) are all of the chosen digit.
    --augment none: a shift fills the border with 0, off the grid."""
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, inp: (
            seen.append(inp[0].detach().clone()) if isinstance(m, gan_mnist.Discriminator) else None
        )
    )
    try:
        run(mnist_root, tmp_path / "r", "--digit", "3", "--batch", "4", "--epochs", "2", "--augment", "none")
    finally:
        hook.remove()
    real = [x for x in seen if torch.allclose((x + 1) * 127.5, ((x + 1) * 127.5).round(), atol=1e-4)]
    assert len(real) == 6  # 12 threes, batches of 4, 2 epochs: 6 steps
    assert {bar_class(img.numpy()) for x in real for img in x} == {3}
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 6


def test_critic_repeats_d_steps_per_generator_step_across_epoch_boundaries(mnist_root, tmp_path, monkeypatch):
    # 120 images, batch 16: 7 batches an epoch, so 5 x 3 D steps cross two epoch ends. --no-quality: the
    # quality figure's classifier, trained on first use, would add optimizer steps of its own
    argv = ["--data_root", mnist_root, "--out", str(tmp_path), *TINY, "--no-quality"]
    argv += ["--critic_repeats", "3", "--max_steps", "5"]
    order, drawn = count_steps(gan_mnist.main, argv, monkeypatch)
    assert order == ["D", "D", "D", "G"] * 5
    assert drawn == [0] * 7 + [1] * 7 + [2]  # a fresh real batch for every D step


def test_resume_without_flags_runs_to_the_end_not_to_the_old_max_steps(mnist_root, tmp_path):
    run(mnist_root, tmp_path / "r", "--epochs", "2", "--max_steps", "3")
    gan_mnist.main(["--resume", str(tmp_path / "r" / "checkpoint.pt"), "--device", "cpu"])
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 14  # 2 x 120 // 16


def test_optimizer_flags_given_with_resume_are_the_ones_used(mnist_root, tmp_path):
    """--beta1 and --lr_d with --resume reach the optimizers; their moments go on from the checkpoint."""
    for name in ("same", "new"):
        run(mnist_root, tmp_path / name, "--max_steps", "2")
    flags = ["--device", "cpu", "--max_steps", "3"]
    G_same, _ = gan_mnist.main(["--resume", str(tmp_path / "same" / "checkpoint.pt"), *flags])
    new = ["--beta1", "0.9", "--lr_d", "0.01"]
    G_new, _ = gan_mnist.main(["--resume", str(tmp_path / "new" / "checkpoint.pt"), *flags, *new])
    ckpt = torch.load(tmp_path / "new" / "checkpoint.pt", weights_only=False)
    assert ckpt["opt_g"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt["opt_d"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert ckpt["opt_d"]["param_groups"][0]["lr"] == 0.01 and ckpt["opt_g"]["param_groups"][0]["lr"] == 2e-4
    assert ckpt["args"]["beta1"] == 0.9 and ckpt["opt_g"]["state"][0]["step"].item() == 3
    assert any(not torch.equal(a, b) for a, b in zip(G_same.parameters(), G_new.parameters(), strict=True))


def test_generate_writes_pngs(mnist_root, tmp_path):
    run(mnist_root, tmp_path / "r", "--max_steps", "1")
    gan_mnist.main(
        ["--resume", str(tmp_path / "r" / "checkpoint.pt"), "--generate", "1000", "--device", "cpu"]
    )
    files = sorted(os.listdir(tmp_path / "r" / "generated"))
    assert len(files) == 1000 and files[0] == "000000.png" and files[-1] == "000999.png"
    with Image.open(tmp_path / "r" / "generated" / files[-1]) as im:
        assert im.size == (28, 28) and np.asarray(im).std() > 0


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--batch", "0"),
        ("--lr", "-1"),
        ("--epochs", "0"),
        ("--zdim", "x"),
        ("--beta1", "1.5"),
        ("--d_dropout", "1"),
        ("--d_input_dropout", "-0.1"),
    ],
)
def test_bad_flag_values_stop_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        gan_mnist.main([flag, value])
    assert e.value.code == 2
    error_line(capsys.readouterr().err, flag)


def test_flags_of_other_models_are_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        gan_mnist.main(["--c_lambda", "10"])
    assert e.value.code == 2
    assert "unrecognized arguments" in error_line(capsys.readouterr().err, "--c_lambda")


def test_generate_without_resume_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        gan_mnist.main(["--generate", "10"])
    assert e.value.code == 2
    assert "--generate" in error_line(capsys.readouterr().err, "--resume")


def test_digit_on_unlabelled_data_is_refused(tmp_path):
    argv = ["--dataset", "folder", "--data_root", str(tmp_path), "--digit", "3", "--device", "cpu"]
    with pytest.raises(SystemExit) as e:
        gan_mnist.main([*argv, "--out", str(tmp_path / "r")])
    message = error_line(e.value, "--digit")  # common.fail's one line
    assert "needs a labelled dataset" in message and message.endswith("not folder")


def test_checkpoint_of_another_script_or_shape_is_refused(mnist_root, tmp_path):
    import gan_gaussian

    gan_gaussian.main(["--out", str(tmp_path / "g"), "--max_steps", "1", "--device", "cpu"])
    with pytest.raises(SystemExit, match="gan_gaussian.py"):
        gan_mnist.main(
            ["--resume", str(tmp_path / "g" / "checkpoint.pt"), "--data_root", mnist_root, "--device", "cpu"]
        )
    run(mnist_root, tmp_path / "m", "--max_steps", "1")
    with pytest.raises(SystemExit, match="--hidden_dim 8.*--hidden_dim 16"):
        gan_mnist.main(
            ["--resume", str(tmp_path / "m" / "checkpoint.pt"), "--hidden_dim", "16", "--device", "cpu"]
        )


def test_missing_data_is_one_message_without_traceback(tmp_path):
    argv = ["--data_root", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--device", "cpu"]
    r = run_script("gan_mnist.py", argv)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(tmp_path / "none") in r.stderr and "train-images-idx3-ubyte" in r.stderr


@pytest.mark.parametrize("flags, shifted", [((), "a quarter"), (("--augment", "none"), "none")])
def test_by_default_a_quarter_of_the_real_digits_d_sees_are_shifted(flags, shifted, mnist_root, tmp_path):
    """The default (--augment translation --augment_p 0.25): a shifted digit has zeros in its border
    (real pixels are k / 127.5 - 1, never 0). Of 2 x 120 real digits, each shifted with probability
    1/4 (a draw of no shift, 1 in 81, leaves one as it was): some, well under half; with
    --augment none, none."""
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, inp: (
            seen.append(inp[0].detach().clone()) if isinstance(m, gan_mnist.Discriminator) else None
        )
    )
    try:
        run(mnist_root, tmp_path / "r", "--batch", "120", "--max_steps", "2", "--no-quality", *flags)
    finally:
        hook.remove()
    assert len(seen) == 6  # each step: D(real), D(fake) in D's step, D(fake) in G's step
    real = torch.cat(seen[0::3])
    assert torch.allclose(real[real != 0], torch.round((real[real != 0] + 1) * 127.5) / 127.5 - 1, atol=1e-5)
    n = int((real == 0).flatten(1).any(1).sum())
    if shifted == "none":
        assert n == 0
    else:
        assert 30 <= n <= 90, n  # 1/4 of 240 is 60
