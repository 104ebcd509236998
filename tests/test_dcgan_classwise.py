"""dcgan_classwise.py: independent pairs, each on its own class only, and the run contract per class."""

import pytest
import torch
import torch.nn.functional as F
from conftest import bar_class, red_class
from helpers_cli import error_line
from PIL import Image

import common
import dcgan_classwise as cw

NO_AUGMENT = common.DiffAugment("none", None)  # --augment none: the images as they are

SMALL = ["--hidden_dim", "8", "--batch", "16", "--zdim", "16", "--image_size", "16", "--device", "cpu"]


def classes_of(batch):
    """The fixture's class of each image of a [-1, 1] batch at 16 or 32 px (bar_class reads 28 x 28)."""
    x = F.interpolate(batch.detach().float(), size=(28, 28), mode="bilinear", antialias=True)
    return [bar_class(im) for im in x]


def test_classes_of_reads_resized_fixture_images(mnist_root):
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 16)
    assert classes_of(images.float() / 127.5 - 1) == labels.tolist()


def snapshot(pairs):
    return {
        c: {k: v.clone() for k, v in (*G.state_dict().items(), *D.state_dict().items())}
        for c, (G, D) in pairs
    }


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["conv", "linear"])
def test_networks_are_dcgans_with_the_same_parameters_for_the_same_seed(arch):
    import dcgan

    for size, channels in ((16, 1), (32, 3)):
        made = []
        for module in (cw, dcgan):
            torch.manual_seed(7)
            G = module.Generator(16, 8, size, channels, arch)
            made.append((G, module.Discriminator(8, size, channels, arch)))
        for mine, theirs in zip(*made):
            a, b = mine.state_dict(), theirs.state_dict()
            assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert made[0][0](torch.randn(2, 16)).shape == (2, channels, size, size)


def test_each_pair_sees_only_its_own_class(mnist_root, tmp_path, monkeypatch):
    seen = []
    real_d_step = cw.d_step

    def recording_d_step(G, D, opt_d, real, z, augment):
        seen.append((D, classes_of(real)))
        return real_d_step(G, D, opt_d, real, z, augment)

    monkeypatch.setattr(cw, "d_step", recording_d_step)
    pairs = cw.main(
        ["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "2,5,9", "--epochs", "4"]
    )
    assert sorted(pairs) == [2, 5, 9]
    owner = {id(D): c for c, (G, D) in pairs.items()}
    assert len(seen) == 3 * 4  # 4 epochs of one 12-image batch per class, every pair each step
    for D, found in seen:
        assert set(found) == {owner[id(D)]}
    assert {owner[id(D)] for D, _ in seen} == {2, 5, 9}


def test_training_one_pair_leaves_the_others_unchanged(mnist_root):
    args = cw.build_parser().parse_args(["--data_root", mnist_root, *SMALL, "--classes", "1,4"])
    run = common.Run(args, cw.SCRIPT, cw.SHAPE_FLAGS)
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 16, args.classes)
    one, four = (cw.Pair(run, c, 1, images[labels == c]) for c in (1, 4))
    before = snapshot({1: (one.G, one.D), 4: (four.G, four.D)}.items())
    noise_before = four.noise.get_state()
    for _ in range(3):
        cw.d_step(one.G, one.D, one.opt_d, one.reader.next(), one.z(one.data.batch), NO_AUGMENT)
        cw.g_step(one.G, one.D, one.opt_g, one.z(one.data.batch), NO_AUGMENT)
    after = snapshot({1: (one.G, one.D), 4: (four.G, four.D)}.items())
    assert not same(before[1], after[1])  # the trained pair did change
    assert same(before[4], after[4]) and torch.equal(noise_before, four.noise.get_state())
    assert four.reader.done == 0 and one.reader.done == 3


def test_a_pair_trains_the_same_alone_or_beside_others(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, *SMALL, "--max_steps", "3"]
    together = cw.main([*base, "--out", str(tmp_path / "a"), "--classes", "3,6"])
    alone = cw.main([*base, "--out", str(tmp_path / "b"), "--classes", "6"])
    for one, two in zip(together[6], alone[6]):
        assert same(one.state_dict(), two.state_dict())
    assert not same(together[3][0].state_dict(), together[6][0].state_dict())


def test_outputs_per_class_and_combined_grid(mnist_root, tmp_path):
    cw.main(["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "0,3", "--epochs", "2"])
    for folder in ("class_0_0", "class_3_3"):
        names = {"losses.png", "progress.gif", "interpolation.png", "samples"}
        assert {p.name for p in (tmp_path / folder).iterdir()} == names, folder  # no checkpoint of its own
        assert sorted(p.name for p in (tmp_path / folder / "samples").iterdir()) == [
            "epoch_0001.png",
            "epoch_0002.png",
        ]
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "samples/epoch_0002.png"):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    things = ("G", "D", "opt_g", "opt_d", "noise", "fixed_z")
    assert {f"{k}_{c}" for k in things for c in (0, 3)} <= set(ckpt) and ckpt["step"] == 2
    # combined grid: 8 columns of 16 px, one row per class, 2 px padding
    assert Image.open(tmp_path / "samples" / "epoch_0002.png").size == (8 * 18 + 2, 2 * 18 + 2)
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"loss_d_0", "loss_g_0", "loss_d_3", "loss_g_3"} <= set(header)


def test_cifar_pairs_see_only_their_class_and_use_its_name(cifar_root, tmp_path, monkeypatch):
    seen = []
    real_d_step = cw.d_step

    def recording_d_step(G, D, opt_d, real, z, augment):
        seen.append((D, {red_class(im) for im in real}))
        return real_d_step(G, D, opt_d, real, z, augment)

    monkeypatch.setattr(cw, "d_step", recording_d_step)
    args = ["--dataset", "cifar10", "--data_root", cifar_root, *SMALL, "--out", str(tmp_path)]
    pairs = cw.main([*args, "--classes", "1,7", "--max_steps", "2"])
    assert pairs[1][0](torch.randn(2, 16)).shape == (2, 3, 16, 16)
    owner = {id(D): c for c, (G, D) in pairs.items()}
    assert len(seen) == 4 and all(found == {owner[id(D)]} for D, found in seen)
    assert {p.name for p in tmp_path.glob("class_*")} == {"class_1_car", "class_7_horse"}


def test_critic_repeats_d_steps_per_generator_step_of_each_pair_across_epoch_boundaries(
    mnist_root, tmp_path, monkeypatch
):
    """Each pair in turn: 3 D steps, each on a new real batch of its own class, then its G step. 12 images
    a class in batches of 5: 2 batches a pass, so a pair's 2 x 3 D steps cross two ends of its data."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    events, original = [], common.TensorBatches.batches

    def drawing(self, epoch, start=0):  # each real batch as it is drawn: its images' classes, its pass
        for x in original(self, epoch, start):
            events.append(("real", tuple(classes_of(x)), epoch))
            yield x

    monkeypatch.setattr(common.TensorBatches, "batches", drawing)
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: events.append(opt))
    argv = ["--data_root", mnist_root, *SMALL, "--batch", "5", "--classes", "2,7", "--out", str(tmp_path)]
    try:  # --no-quality: the quality figure's classifier, trained on first use, has an optimizer too
        pairs = cw.main([*argv, "--no-quality", "--critic_repeats", "3", "--max_steps", "2"])
    finally:
        hook.remove()
    stepped = {
        id(p): (kind, c)
        for c, nets in pairs.items()
        for kind, net in zip("GD", nets)
        for p in net.parameters()
    }
    seen = [e if isinstance(e, tuple) else stepped[id(e.param_groups[0]["params"][0])] for e in events]
    expected = []
    for step in range(2):
        for c in (2, 7):
            for k in range(3 * step, 3 * step + 3):  # the pair's k-th real batch: pass k // 2
                expected += [("real", (c,) * 5, k // 2), ("D", c)]
            expected += [("G", c)]
    assert seen == expected


@pytest.mark.parametrize("critic_repeats", ["1", "3"])
def test_resume_is_exact_for_every_pair(mnist_root, tmp_path, critic_repeats):
    """2 batches per class and a stop after 3 or 9 of them: each pair resumes in the middle of a pass
    (and with 3 D updates per step, a step spans two passes)."""
    base = ["--data_root", mnist_root, *SMALL, "--batch", "5", "--classes", "2,7", "--log_every", "1"]
    base += ["--critic_repeats", critic_repeats]
    full = cw.main([*base, "--out", str(tmp_path / "a"), "--max_steps", "4"])
    cw.main([*base, "--out", str(tmp_path / "b"), "--max_steps", "3"])
    resumed = cw.main(
        ["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--device", "cpu", "--max_steps", "4"]
    )
    for c in (2, 7):
        for one, two in zip(full[c], resumed[c]):
            assert same(one.state_dict(), two.state_dict()), c
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


def test_checkpoint_holds_each_pairs_noise_as_a_cpu_generator_state(mnist_root, tmp_path):
    """The noise state loads into a CPU torch.Generator whatever device trained, so a run resumes
    on another kind of device; it is the pair's stream after fixed_z and two steps' z, drawn on the CPU."""
    cw.main(
        ["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "3,8", "--max_steps", "2"]
    )
    ckpt = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    for c in (3, 8):
        restored = torch.Generator()
        restored.set_state(ckpt[f"noise_{c}"])  # a CUDA generator's state is refused here
        expected = torch.Generator().manual_seed(c)  # seed 0: pair c's seed is 0 * 1000 + c
        assert torch.equal(ckpt[f"fixed_z_{c}"], torch.randn(64, 16, generator=expected))
        for _ in range(2 * 2):  # two steps, each one D and one G batch of 12 (the class's 12 images)
            torch.randn(12, 16, generator=expected)
        assert torch.equal(restored.get_state(), expected.get_state())


def test_optimizer_flags_given_with_resume_are_the_ones_used_afterwards(mnist_root, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    base = ["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "0,5"]
    cw.main([*base, "--max_steps", "1"])
    used = []  # the hyperparameters each optimizer step really ran with
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: used.append((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]))
    )
    try:
        cw.main(
            [
                "--resume",
                str(tmp_path / "checkpoint.pt"),
                "--device",
                "cpu",
                "--lr",
                "0.003",
                "--beta1",
                "0.9",
                "--max_steps",
                "2",
            ]
        )
    finally:
        handle.remove()
    assert len(used) == 4 and set(used) == {(0.003, (0.9, 0.999))}  # two pairs, one D and one G step each
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    groups = [g for c in (0, 5) for k in ("opt_g", "opt_d") for g in ckpt[f"{k}_{c}"]["param_groups"]]
    assert ckpt["step"] == 2 and [(g["lr"], g["betas"]) for g in groups] == [(0.003, (0.9, 0.999))] * 4


def test_generate_writes_n_per_class(mnist_root, tmp_path):
    cw.main(
        ["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "4,8", "--max_steps", "1"]
    )
    cw.main(["--resume", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--generate", "5"])
    for folder in ("class_4_4", "class_8_8"):
        files = sorted((tmp_path / folder / "generated").glob("*.png"))
        assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
        assert all(Image.open(f).size == (16, 16) for f in files)


def test_refusals(mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cw.main(["--image_size", "48"])
    assert e.value.code == 2 and "power of two" in error_line(capsys.readouterr().err, "--image_size 48")
    with pytest.raises(SystemExit) as e:
        cw.main(["--dataset", "celeba"])
    assert e.value.code == 2 and "'celeba'" in error_line(capsys.readouterr().err, "--dataset")
    for bad in ("3,12", "3,a", "-1"):
        with pytest.raises(SystemExit) as e:
            cw.main(["--classes", bad])
        assert e.value.code == 2 and repr(bad) in error_line(capsys.readouterr().err, "--classes")
    cw.main(["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "1", "--max_steps", "1"])
    with pytest.raises(SystemExit) as e:
        cw.main(["--resume", str(tmp_path / "checkpoint.pt"), "--device", "cpu", "--classes", "1,2"])
    message = error_line(e.value, "--classes 1,2")  # common.fail's one line
    assert "--classes 1;" in message and "dcgan_classwise.py" in message


def test_defaults_are_dcgans_but_a_batch_of_64_per_pair():
    """DCGAN's optimizer and sizes; the batch is halved: a pair sees one class (docs/dcgan_classwise.md)."""
    a = cw.build_parser().parse_args([])
    assert (a.lr, a.beta1, a.zdim, a.hidden_dim, a.image_size) == (2e-4, 0.5, 100, 64, 32)
    assert a.critic_repeats == 1
    assert a.batch == 64 and a.classes == [*range(10)]
