"""--augment (DiffAugment on everything D sees), --train_images (a small, class-balanced training set),
and evaluate.py's check that samples are not copies (fid_held_out, copy_share)."""

import csv
import importlib

import numpy as np
import pytest
import torch
from conftest import bar_images, write_idx
from helpers_cli import error_line

import common
import evaluate

IMAGE_SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
TINY = ["--hidden_dim", "4", "--batch", "8", "--zdim", "8", "--device", "cpu", "--no-quality"]


def tiny_args(name, data_root):
    size = ["--image_size", "28" if name == "gan_mnist" else "16"]
    classes = ["--classes", "1,4"] if name == "dcgan_classwise" else []
    return ["--data_root", data_root, *TINY, *size, *classes]


def zero_box(image, least, mask=False):
    """(rows, columns) of the axis-aligned box of exact zeros (zero in every channel) that the rows
    and columns holding `least` zeros or more make in a C x H x W image, (0, 0) when there is none.
    Fails when they make no box. (A tiny G's output is exactly 0 here and there, where ReLU silenced
    every input of the last layer's pixel and its bias is still 0: single zeros are allowed.)"""
    zero = (image == 0).all(dim=0)
    rows, cols = (zero.sum(dim=1) >= least).nonzero()[:, 0], (zero.sum(dim=0) >= least).nonzero()[:, 0]
    if len(rows) == 0 and len(cols) == 0:
        return 0, 0
    assert len(rows) and rows[-1] - rows[0] + 1 == len(rows), "zero rows not one block"
    assert len(cols) and cols[-1] - cols[0] + 1 == len(cols), "zero columns not one block"
    assert zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all(), "zeros not one box"
    if mask:  # the box, as an H x W mask
        box = torch.zeros_like(zero)
        box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        return box
    return len(rows), len(cols)


def one_step_seen(name, data_root, out, monkeypatch, augment):
    """One generator step of the real script: every input of D as (tensor, D frozen?), and the
    gradient of the loss with respect to each G output that got one (the G step's)."""
    module = importlib.import_module(name)
    D_class = module.Critic if name.startswith("wgan") else module.Discriminator
    seen, grads = [], []
    d_forward, g_forward = D_class.forward, module.Generator.forward

    def record_input(self, x):
        seen.append((x.detach().clone(), not any(p.requires_grad for p in self.parameters())))
        return d_forward(self, x)

    def record_grad(self, z):
        out = g_forward(self, z)
        if out.requires_grad:
            out.register_hook(lambda g: grads.append(g.detach().clone()))
        return out

    monkeypatch.setattr(D_class, "forward", record_input)
    monkeypatch.setattr(module.Generator, "forward", record_grad)
    # gan_mnist's dropout would zero gradients of its own (all 4 units of a tiny layer, now and then)
    dropout = ["--d_dropout", "0", "--d_input_dropout", "0"] if name == "gan_mnist" else []
    # --augment_p 1: every image transformed, whatever the script's default strength
    flags = [*tiny_args(name, data_root), *dropout, "--augment", augment, "--augment_p", "1"]
    flags += ["--max_steps", "1"]
    module.main([*flags, "--out", out])
    return seen, grads


@pytest.mark.parametrize("name", IMAGE_SCRIPTS)
def test_d_sees_every_image_augmented_in_both_steps_and_g_learns_through_it(
    name, mnist_root, tmp_path, monkeypatch
):
    """--augment cutout sets a square of half the side to 0 (real pixels are k / 127.5 - 1, never 0):
    every image D receives, real and generated, in D's steps and G's, carries one; G's output gets
    no gradient under its square and a gradient elsewhere (G learns through the transform)."""
    seen, grads = one_step_seen(name, mnist_root, str(tmp_path / "cut"), monkeypatch, "cutout")
    side = 28 if name == "gan_mnist" else 16
    d_inputs = [x for x, frozen in seen if not frozen]
    if name == "wgan_gp":  # real, fake, then the penalty's interpolates of those two: eps r + (1 - eps) f
        triples = [d_inputs[i : i + 3] for i in range(0, len(d_inputs), 3)]
        for real, fake, x_hat in triples:
            eps = ((x_hat - fake) * (real - fake)).flatten(1).sum(1) / (real - fake).flatten(1).pow(2).sum(1)
            mixed = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
            torch.testing.assert_close(x_hat, mixed, rtol=1e-5, atol=1e-5)
        d_inputs = [x for real, fake, _ in triples for x in (real, fake)]
    g_inputs = [x for x, frozen in seen if frozen]
    assert d_inputs and g_inputs and grads
    for x in d_inputs + g_inputs:
        for image in x:
            rows, cols = zero_box(image, side // 4)  # a square of side / 2, at least a quarter of it inside
            assert side // 4 <= rows <= side // 2 and side // 4 <= cols <= side // 2, (rows, cols)
    # G's step: D saw augment(G(z)); where it saw the cutout, G's image got no gradient
    for image, grad in zip(g_inputs[-1], grads[-1]):
        under = zero_box(image, side // 4, mask=True).expand_as(grad)
        assert (grad[under] == 0).all()
        assert (grad[~under] != 0).float().mean() > 0.9

    real = common.load_tensor_dataset("mnist", mnist_root, side)[0].float() / 127.5 - 1
    assert (real != 0).all()  # the zeros above are the augmentation's: the real images have none


def fixed(u):
    """A draw that gives u everywhere: the transform it selects, for a test to predict."""
    return lambda n, *shape: torch.full((n, *shape), float(u))


def test_translation_shifts_each_image_with_a_zero_border():
    x = torch.rand(2, 3, 16, 16) + 0.5  # no zeros of its own
    down_right = common.DiffAugment("translation", fixed(0.999))(x)  # the largest shift: 2 px at 16
    assert torch.equal(down_right[:, :, 2:, 2:], x[:, :, :-2, :-2])
    assert (down_right[:, :, :2] == 0).all() and (down_right[:, :, :, :2] == 0).all()
    assert torch.equal(common.DiffAugment("translation", fixed(0.5))(x), x)  # the middle: no shift
    up_left = common.DiffAugment("translation", fixed(0.0))(x)
    assert torch.equal(up_left[:, :, :-2, :-2], x[:, :, 2:, 2:])
    # each image draws its own shift
    mixed = common.DiffAugment("translation", lambda n, *s: torch.tensor([[0.0, 0.0], [0.999, 0.999]]))(x)
    assert torch.equal(mixed[0], up_left[0]) and torch.equal(mixed[1], down_right[1])


def test_cutout_zeroes_a_square_of_half_the_side_and_color_skips_saturation_on_grey():
    x = torch.rand(2, 1, 16, 16) + 0.5
    cut = common.DiffAugment("cutout", fixed(0.5))(x)  # centred: the whole 8 x 8 square inside
    assert zero_box(cut[0], 1) == (8, 8) and (cut[0] == 0).sum() == 64
    assert torch.equal(cut[0, 0, :4], x[0, 0, :4])
    for channels, draws in ((1, 2), (3, 3)):  # brightness, [saturation,] contrast
        calls = []

        def draw(n, *shape):
            calls.append(shape)
            return torch.rand(n, *shape)

        common.DiffAugment("color", draw)(torch.rand(4, channels, 8, 8))
        assert len(calls) == draws
    grey = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(common.DiffAugment("color", fixed(0.5))(grey), grey)  # +0, x1 contrast


def test_the_augment_flag_takes_the_three_policies_in_any_order_and_refuses_others(mnist_root, capsys):
    assert common.augment_policy("cutout, translation") == "translation,cutout"
    assert common.augment_policy("none") == "none"
    dcgan = importlib.import_module("dcgan")
    for bad in ("flip", "none,cutout", ""):
        with pytest.raises(SystemExit):
            dcgan.main(["--data_root", mnist_root, "--augment", bad, "--device", "cpu"])
        error_line(capsys.readouterr().err, "--augment")


def final_weights(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    weights = {f"{name}.{k}": v for name in ("G", "D", "G_ema") for k, v in ckpt[name].items()}
    assert len(weights) == sum(len(ckpt[name]) for name in ("G", "D", "G_ema"))
    return weights


def test_a_small_augmented_run_resumes_exactly(mnist_root, tmp_path):
    """--train_images 40 (5 batches of 8 an epoch) and every policy: 6 steps in one go are 3, then
    3 more from the checkpoint, bit for bit (the draws come from the saved random state)."""
    dcgan = importlib.import_module("dcgan")
    flags = [*tiny_args("dcgan", mnist_root), "--train_images", "40", "--augment", "color,translation,cutout"]
    dcgan.main([*flags, "--max_steps", "6", "--out", str(tmp_path / "whole")])
    dcgan.main([*flags, "--max_steps", "3", "--out", str(tmp_path / "half")])
    resume = ["--resume", str(tmp_path / "half" / "checkpoint.pt"), "--device", "cpu", "--no-quality"]
    dcgan.main([*resume, "--max_steps", "6", "--out", str(tmp_path / "half")])
    whole, half = final_weights(tmp_path / "whole"), final_weights(tmp_path / "half")
    assert all(torch.equal(whole[k], half[k]) for k in whole)
    dcgan.main([*flags, "--augment", "none", "--max_steps", "6", "--out", str(tmp_path / "plain")])
    plain = final_weights(tmp_path / "plain")
    assert not all(torch.equal(whole[k], plain[k]) for k in whole)  # the augmentation changed the run


def test_train_images_takes_as_many_of_each_class_chosen_by_the_seed(mnist_root, capsys):
    labels = torch.arange(10).repeat_interleave(12)
    first = common.train_subset(120, 50, seed=0, labels=labels)
    assert len(first) == 50 and torch.bincount(labels[first]).tolist() == [5] * 10
    assert torch.equal(first, common.train_subset(120, 50, seed=0, labels=labels))
    assert not torch.equal(first, common.train_subset(120, 50, seed=1, labels=labels))
    odd = common.train_subset(120, 15, seed=0, labels=labels)
    assert sorted(torch.bincount(labels[odd], minlength=10).tolist()) == [1] * 5 + [2] * 5
    dcgan = importlib.import_module("dcgan")
    dcgan.main([*tiny_args("dcgan", mnist_root), "--train_images", "24", "--max_steps", "1", "--out", "r"])
    assert "3 batches of 8 per epoch" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        dcgan.main([*tiny_args("dcgan", mnist_root), "--train_images", "121", "--out", "r2"])
    assert "only 120 images" in error_line(str(stop.value), "--train_images")


@pytest.fixture(scope="module")
def held_out_root(tmp_path_factory):
    """MNIST-format files whose test split is new images (other noise), not training images."""
    root = tmp_path_factory.mktemp("held")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = np.repeat(np.arange(10), 20)
    write_idx(raw / "train-images-idx3-ubyte", bar_images(labels, seed=0))
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    write_idx(raw / "t10k-images-idx3-ubyte", bar_images(labels, seed=5))
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    return root


def test_copy_share_is_one_half_for_new_real_images_and_one_for_the_training_images(held_out_root):
    train, labels = common.load_tensor_dataset("mnist", held_out_root, 28)
    held = evaluate.held_out_split("mnist", held_out_root)[0]
    other_new = torch.from_numpy(bar_images(labels.numpy(), seed=9)).unsqueeze(1)  # real, never trained on
    assert abs(evaluate.copy_share(other_new, train, held) - 0.5) < 0.12
    assert evaluate.copy_share(train[::2], train, held) == 1.0
    assert evaluate.copy_share(torch.full_like(held, 255), train, held) == 0.0  # nothing like the data


def test_evaluate_reports_held_out_fid_and_copy_share_against_the_images_a_run_trained_on(
    held_out_root, tmp_path
):
    pytest.importorskip("torch_fidelity")
    train, labels = common.load_tensor_dataset("mnist", held_out_root, 16)
    keep = common.train_subset(len(train), 40, 3, labels)
    common.save_pngs(train[keep].float() / 127.5 - 1, tmp_path / "copies")
    flags = ["--dataset", "mnist", "--data_root", str(held_out_root), "--device", "cpu", "--json"]
    copies = evaluate.main([str(tmp_path / "copies"), *flags])
    assert copies["copy_share"] == 1.0 and copies["n_held_out"] == 200 and copies["fid_held_out"] > 0
    # a checkpoint of a --train_images 40 --seed 3 run: its training images are those 40
    trained = evaluate.real_images("mnist", held_out_root, 16, 1, 1000, trained=(40, 3))[0]
    assert torch.equal(trained, train[keep])


def coins(*values):
    """A draw for --augment_p: 0.5 for every transform's own numbers (a centred cutout), `values` in
    turn for the coins (shape n x 1 x 1 x 1), and a log of every draw's shape."""
    shapes, left = [], list(values)

    def draw(n, *shape):
        shapes.append(shape)
        if shape == (1, 1, 1):
            return torch.tensor(left.pop(0)).view(n, 1, 1, 1)
        return torch.full((n, *shape), 0.5)

    return draw, shapes


def test_augment_p_gives_each_image_its_own_coin_and_p_1_draws_none():
    x = torch.rand(2, 1, 16, 16) + 0.5
    cut = common.DiffAugment("cutout", fixed(0.5))(x)
    draw, shapes = coins([0.2, 0.7])
    half = common.DiffAugment("cutout", draw, 0.5)(x)  # the first image's coin is under 0.5: cut
    assert torch.equal(half[0], cut[0]) and torch.equal(half[1], x[1])
    assert shapes.count((1, 1, 1)) == 1
    draw, shapes = coins([0.0, 0.0])
    assert torch.equal(common.DiffAugment("cutout", draw, 0.0)(x), x)  # p = 0: never, whatever the coin
    draw, shapes = coins()
    assert torch.equal(common.DiffAugment("cutout", draw, 1.0)(x), cut) and (1, 1, 1) not in shapes


def test_ada_raises_p_while_d_calls_the_real_images_real_and_lowers_it_otherwise():
    """r = E[sign D(x)] over the logits seen since p last moved: above 0.6 p rises by the images seen
    over 500,000, below it p falls, never under 0 nor over 1; the sums start again after each move."""
    ada = common.DiffAugment("translation", fixed(0.5), "ada")
    assert ada.adaptive and ada.state[0] == 0
    for _ in range(4):  # 4 x 64 logits, 54 of each 64 positive: r = (54 - 10) / 64 = 0.69 > 0.6
        ada.observe(torch.cat([torch.full((54,), 3.0), torch.full((10,), -1.0)]))
    ada.adapt()
    torch.testing.assert_close(ada.state, torch.tensor([256 / common.ADA_IMAGES, 0.0, 0.0]))
    for _ in range(4):  # 51 of 64: r = 0.59 < 0.6
        ada.observe(torch.cat([torch.full((51,), 3.0), torch.full((13,), -1.0)]))
    ada.adapt()
    torch.testing.assert_close(ada.state, torch.zeros(3))
    ada.observe(-torch.ones(64))
    ada.adapt()  # already 0: stays 0
    assert ada.state[0] == 0
    ada.state[0] = 0.9999
    ada.observe(torch.ones(500))
    ada.adapt()
    assert ada.state[0] == 1
    fixed_p = common.DiffAugment("translation", fixed(0.5), 0.3)
    fixed_p.observe(torch.ones(64))
    fixed_p.adapt()
    torch.testing.assert_close(fixed_p.state, torch.tensor([0.3, 0.0, 0.0]))  # a fixed p: never moves


LOGIT_SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "sn_dcgan"]


@pytest.mark.parametrize("name", LOGIT_SCRIPTS)
def test_ada_reads_d_on_the_real_batch_of_every_d_step_and_saves_and_logs_p(
    name, mnist_root, tmp_path, monkeypatch
):
    """With --augment_p ada each D step hands augment.observe its logits on the real batch (D's first
    call of the step), and after 4 steps p has moved by the rule on exactly those logits; the
    checkpoint holds p (one per pair in dcgan_classwise) and log.csv logs it. The target is set
    below any r and 64 images move p by 1, so p must rise by (images seen) / 64."""
    module = importlib.import_module(name)
    monkeypatch.setattr(common, "ADA_TARGET", -1.0)
    monkeypatch.setattr(common, "ADA_IMAGES", 64)
    outputs, observed = [], []
    d_forward, observe = module.Discriminator.forward, common.DiffAugment.observe

    def record_output(self, x):
        out = d_forward(self, x)
        if any(p.requires_grad for p in self.parameters()):  # D's step, not G's
            outputs.append(out.detach().float().clone())
        return out

    def record_observed(self, logits):
        observed.append((self, logits.detach().clone()))
        return observe(self, logits)

    monkeypatch.setattr(module.Discriminator, "forward", record_output)
    monkeypatch.setattr(common.DiffAugment, "observe", record_observed)
    out = tmp_path / "ada"
    flags = [*tiny_args(name, mnist_root), "--augment", "translation", "--augment_p", "ada"]
    module.main([*flags, "--max_steps", "3", "--log_every", "1", "--out", str(out)])
    names = ["augment_1", "augment_4"] if name == "dcgan_classwise" else ["augment"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    for i, key in enumerate(names):  # dcgan_classwise: pair 1's D, then pair 4's, each step
        logits = torch.cat([logits for _, logits in observed[i :: len(names)]])
        assert len(logits) == 3 * 8
        torch.testing.assert_close(ckpt[key], torch.tensor([0.0, float(logits.sign().sum()), 24.0]))
    resume = ["--resume", str(out / "checkpoint.pt"), "--device", "cpu", "--no-quality"]
    module.main([*resume, "--max_steps", "4", "--out", str(out)])  # p moves after the 4th step
    real_outputs = outputs[0::2]  # each D step: D(augment(real)), then D(augment(fake))
    assert len(observed) == len(real_outputs) == 4 * len(names)
    for (_, logits), real in zip(observed, real_outputs):
        torch.testing.assert_close(logits, real, rtol=0, atol=0)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    header = (out / "log.csv").read_text().splitlines()[0].split(",")
    for i, key in enumerate(names):
        logits = torch.cat([logits for _, logits in observed[i :: len(names)]])
        torch.testing.assert_close(ckpt[key], torch.tensor([len(logits) / 64, 0.0, 0.0]))
        assert f"{key}_p" in header


@pytest.mark.parametrize("name", ["wgan", "wgan_gp"])
def test_the_wgan_scripts_refuse_ada_and_every_script_refuses_augment_p_without_a_policy(
    name, mnist_root, capsys
):
    module = importlib.import_module(name)
    for flags, words in (
        (["--augment", "translation", "--augment_p", "ada"], "logit"),
        (["--augment_p", "0.5"], "policy"),
    ):
        with pytest.raises(SystemExit):
            module.main(["--data_root", mnist_root, *flags, "--device", "cpu"])
        assert words in error_line(capsys.readouterr().err, "--augment_p")


def test_an_ada_run_resumes_exactly_with_its_p_and_its_sums_since_the_last_move(
    mnist_root, tmp_path, monkeypatch
):
    """6 steps in one go against 3, then 3 from the checkpoint: p moves at step 4, from the signs of
    steps 1-4, 3 of which were counted before the save. With the target below any r and 32 images
    to move p by 1, p is 1 from step 5, so steps 5 and 6 augment every image. A resume that stops
    before its first step keeps the checkpoint's ada state as it was."""
    monkeypatch.setattr(common, "ADA_TARGET", -1.0)
    monkeypatch.setattr(common, "ADA_IMAGES", 32)
    dcgan = importlib.import_module("dcgan")
    flags = [*tiny_args("dcgan", mnist_root), "--augment", "translation,cutout", "--augment_p", "ada"]
    dcgan.main([*flags, "--max_steps", "6", "--log_every", "2", "--out", str(tmp_path / "whole")])
    rows = list(csv.DictReader((tmp_path / "whole" / "log.csv").open()))
    assert [float(r["augment_p"]) for r in rows if r["step"] in ("4", "6")] == [0.5, 1.0]  # p of 3, 4; 5, 6
    dcgan.main([*flags, "--max_steps", "3", "--out", str(tmp_path / "half")])
    half = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=False)["augment"]
    assert half[0] == 0 and half[2] == 3 * 8  # before the move: 3 steps' 8 real logits counted
    resume = ["--resume", str(tmp_path / "half" / "checkpoint.pt"), "--device", "cpu", "--no-quality"]
    dcgan.main([*resume, "--max_steps", "6", "--out", str(tmp_path / "half")])
    whole, half = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("whole", "half"))
    assert torch.equal(whole["augment"], half["augment"]) and whole["augment"][2] == 2 * 8
    assert whole["augment"][0] == 1
    assert all(torch.equal(whole["D"][k], half["D"][k]) for k in whole["D"])
    dcgan.main([*resume, "--max_steps", "6", "--out", str(tmp_path / "half")])  # no step to make
    again = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=False)
    assert again["step"] == 6 and torch.equal(again["augment"], whole["augment"])
