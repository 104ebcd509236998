"""dcgan_classwise.py: independent pairs, each on its own class only, and the run contract per class."""

import pytest
import torch
import torch.nn.functional as F
from conftest import bar_class, red_class
from PIL import Image

import common
import dcgan_classwise as cw

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


def test_each_pair_sees_only_its_own_class(mnist_root, tmp_path, monkeypatch):
    seen = []
    real_d_step = cw.d_step

    def recording_d_step(G, D, opt_d, real, zdim, noise):
        seen.append((D, classes_of(real)))
        return real_d_step(G, D, opt_d, real, zdim, noise)

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
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 16, args.classes)
    one, four = (cw.Pair(args, c, images[labels == c], 1, torch.device("cpu")) for c in (1, 4))
    before = snapshot({1: (one.G, one.D), 4: (four.G, four.D)}.items())
    noise_before = four.noise.get_state()
    for _ in range(3):
        one.train_step(args)
    after = snapshot({1: (one.G, one.D), 4: (four.G, four.D)}.items())
    assert not same(before[1], after[1])  # the trained pair did change
    assert same(before[4], after[4]) and torch.equal(noise_before, four.noise.get_state())
    assert four.step == 0 and one.step == 3


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
        for name in ("checkpoint.pt", "losses.png", "progress.gif", "interpolation.png"):
            assert (tmp_path / folder / name).is_file(), f"{folder}/{name}"
        assert sorted(p.name for p in (tmp_path / folder / "samples").iterdir()) == [
            "epoch_0001.png",
            "epoch_0002.png",
        ]
    for name in ("checkpoint.pt", "log.csv", "losses.png", "progress.gif", "samples/epoch_0002.png"):
        assert (tmp_path / name).is_file(), name
    # combined grid: 8 columns of 16 px, one row per class, 2 px padding
    assert Image.open(tmp_path / "samples" / "epoch_0002.png").size == (8 * 18 + 2, 2 * 18 + 2)
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert {"loss_d_0", "loss_g_0", "loss_d_3", "loss_g_3"} <= set(header)


def test_cifar_pairs_see_only_their_class_and_use_its_name(cifar_root, tmp_path, monkeypatch):
    seen = []
    real_d_step = cw.d_step

    def recording_d_step(G, D, opt_d, real, zdim, noise):
        seen.append((D, {red_class(im) for im in real}))
        return real_d_step(G, D, opt_d, real, zdim, noise)

    monkeypatch.setattr(cw, "d_step", recording_d_step)
    args = ["--dataset", "cifar10", "--data_root", cifar_root, *SMALL, "--out", str(tmp_path)]
    pairs = cw.main([*args, "--classes", "1,7", "--max_steps", "2"])
    assert pairs[1][0].image_shape == (3, 16, 16)
    owner = {id(D): c for c, (G, D) in pairs.items()}
    assert len(seen) == 4 and all(found == {owner[id(D)]} for D, found in seen)
    assert (tmp_path / "class_1_car" / "checkpoint.pt").is_file()
    assert (tmp_path / "class_7_horse" / "checkpoint.pt").is_file()


def test_resume_is_exact_for_every_pair(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, *SMALL, "--classes", "2,7", "--log_every", "1"]
    full = cw.main([*base, "--out", str(tmp_path / "a"), "--max_steps", "4"])
    cw.main([*base, "--out", str(tmp_path / "b"), "--max_steps", "2"])
    resumed = cw.main(["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--max_steps", "4"])
    for c in (2, 7):
        for one, two in zip(full[c], resumed[c]):
            assert same(one.state_dict(), two.state_dict()), c


def test_resume_catches_up_a_pair_saved_behind_the_others(mnist_root, tmp_path):
    """A run killed between two pairs' checkpoint writes: the pair behind catches up, exactly."""
    base = ["--data_root", mnist_root, *SMALL, "--classes", "2,7"]
    full = cw.main([*base, "--out", str(tmp_path / "a"), "--max_steps", "3"])
    cw.main([*base, "--out", str(tmp_path / "b"), "--max_steps", "1"])
    behind = torch.load(tmp_path / "b" / "class_2_2" / "checkpoint.pt", weights_only=False)
    cw.main(["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--max_steps", "2"])
    common.save_checkpoint(tmp_path / "b" / "class_2_2" / "checkpoint.pt", behind)
    resumed = cw.main(["--resume", str(tmp_path / "b" / "checkpoint.pt"), "--max_steps", "3"])
    for c in (2, 7):
        for one, two in zip(full[c], resumed[c]):
            assert same(one.state_dict(), two.state_dict()), c


def test_generate_writes_n_per_class(mnist_root, tmp_path):
    cw.main(
        ["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "4,8", "--max_steps", "1"]
    )
    cw.main(["--resume", str(tmp_path / "checkpoint.pt"), "--generate", "5"])
    for folder in ("class_4_4", "class_8_8"):
        files = sorted((tmp_path / folder / "generated").glob("*.png"))
        assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
        assert all(Image.open(f).size == (16, 16) for f in files)


def test_refusals(mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cw.main(["--image_size", "48"])
    assert e.value.code == 2 and "--image_size 48" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cw.main(["--dataset", "celeba"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--dataset" in err and "'celeba'" in err
    with pytest.raises(SystemExit) as e:
        cw.main(["--classes", "3,12"])
    assert e.value.code == 2 and "--classes" in capsys.readouterr().err
    cw.main(["--data_root", mnist_root, *SMALL, "--out", str(tmp_path), "--classes", "1", "--max_steps", "1"])
    with pytest.raises(SystemExit) as e:
        cw.main(["--resume", str(tmp_path / "checkpoint.pt"), "--classes", "1,2"])
    assert (
        "--classes 1;" in str(e.value)
        and "--classes 1,2" in str(e.value)
        and "dcgan_classwise.py" in str(e.value)
    )
    with pytest.raises(SystemExit) as e:
        cw.main(["--resume", str(tmp_path / "class_1_1" / "checkpoint.pt"), "--max_steps", "2"])
    assert "class_1_1" in str(e.value)


def test_nonfinite_loss_stops_with_step_and_keeps_every_checkpoint(mnist_root, tmp_path):
    base = ["--data_root", mnist_root, *SMALL, "--classes", "0,5", "--out", str(tmp_path)]
    cw.main([*base, "--max_steps", "2"])
    good = {c: torch.load(tmp_path / f"class_{c}_{c}" / "checkpoint.pt", weights_only=False) for c in (0, 5)}
    with pytest.raises(SystemExit, match=r"loss_._\d became .* at step \d+"):
        cw.main(["--resume", str(tmp_path / "checkpoint.pt"), "--lr", "1e38", "--max_steps", "60"])
    for c in (0, 5):
        kept = torch.load(tmp_path / f"class_{c}_{c}" / "checkpoint.pt", weights_only=False)
        assert kept["step"] == 2 and same(good[c]["G"], kept["G"])
