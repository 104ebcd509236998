"""The data loaders on the fixtures, the offline error, and the small I/O helpers of common.py."""

import argparse
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import bar_class, red_class
from PIL import Image

import common

CPU = torch.device("cpu")


def data_args(dataset, root, size, batch=16, seed=0):
    return SimpleNamespace(
        dataset=dataset, data_root=root, image_size=size, batch=batch, seed=seed, workers=0
    )


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_mnist_loader_shapes_range_channels(mnist_root, dataset, size):
    data = common.make_batches(data_args(dataset, mnist_root, size), CPU)
    assert isinstance(data, common.TensorBatches) and data.channels == 1
    assert len(data) == 120 // 16
    batches = list(data.batches(epoch=0))
    assert len(batches) == len(data)
    x = batches[0]
    assert x.shape == (16, 1, size, size) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() < -0.7 and x.max() > 0.9  # really scaled to [-1, 1], not [0, 1]


def test_mnist_loader_reads_the_real_pixels(mnist_root):
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 28)
    assert images.dtype == torch.uint8 and images.shape == (120, 1, 28, 28)
    assert [bar_class(im) for im in images] == labels.tolist()


def test_class_filter_keeps_only_those_classes(mnist_root):
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 28, classes=[3, 7])
    assert set(labels.tolist()) == {3, 7} and len(images) == 24
    assert {bar_class(im) for im in images} == {3, 7}


def test_cifar_loader_reads_pickles_and_filters(cifar_root):
    images, labels = common.load_tensor_dataset("cifar10", cifar_root, 32, classes=[1, 4])
    assert images.shape[1:] == (3, 32, 32) and len(images) == int(((labels == 1) | (labels == 4)).sum())
    assert [red_class(im) for im in images] == labels.tolist()
    data = common.make_batches(data_args("cifar10", cifar_root, 64), CPU)
    assert data.channels == 3 and next(data.batches(0)).shape == (16, 3, 64, 64)


def test_shuffle_depends_on_seed_and_epoch_and_resumes_mid_epoch(mnist_root):
    data = common.make_batches(data_args("mnist", mnist_root, 28), CPU)
    e0, e1 = list(data.batches(0)), list(data.batches(1))
    assert not torch.equal(e0[0], e1[0])
    assert all(torch.equal(a, b) for a, b in zip(e0[3:], data.batches(0, start=3), strict=True))
    other = common.make_batches(data_args("mnist", mnist_root, 28, seed=1), CPU)
    assert not torch.equal(e0[0], next(other.batches(0)))
    # one epoch shows every image at most once
    seen = torch.cat(e0).flatten(1)
    assert len(torch.unique(seen, dim=0)) == len(seen)


def test_folder_loader_nested_mixed_formats(folder_root):
    data = common.make_batches(data_args("folder", folder_root, 32, batch=5), CPU)
    assert isinstance(data, common.FolderBatches) and data.channels == 3
    assert len(data.dataset) == 12 and len(data) == 2
    batches = list(data.batches(0))
    assert [b.shape for b in batches] == [(5, 3, 32, 32)] * 2
    assert all(b.min() >= -1 and b.max() <= 1 for b in batches)
    assert torch.equal(batches[1], next(data.batches(0, start=1)))


def test_folder_loader_grayscale(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((20, 30), 60 * i, dtype=np.uint8), "L").save(tmp_path / f"{i}.png")
    data = common.make_batches(data_args("folder", str(tmp_path), 16, batch=4), CPU)
    assert data.channels == 1 and next(data.batches(0)).shape == (4, 1, 16, 16)


def test_celeba_layout_center_crop(celeba_root):
    data = common.make_batches(data_args("celeba", celeba_root, 64, batch=4), CPU)
    assert data.channels == 3 and len(data.dataset) == 10
    assert next(data.batches(0)).shape == (4, 3, 64, 64)


@pytest.mark.parametrize(
    "dataset, says",
    [
        ("mnist", ["MNIST", "train-images-idx3-ubyte"]),
        ("fashion-mnist", ["FashionMNIST", "train-images-idx3-ubyte"]),
        ("cifar10", ["cifar-10-batches-py", "data_batch_1"]),
        ("celeba", ["img_align_celeba"]),
        ("folder", ["no images"]),
    ],
)
def test_missing_data_offline_is_one_clear_message(tmp_path, dataset, says):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        common.make_batches(data_args(dataset, str(empty), 32), CPU)
    message = str(e.value.code)
    assert message.startswith("error:") and str(empty) in message
    for word in says:
        assert word in message


def test_positive_types_reject_bad_values():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=common.positive_int)
    parser.add_argument("--lr", type=common.positive_float)
    for argv in (["--batch", "0"], ["--batch", "-3"], ["--lr", "-0.1"], ["--lr", "nan"], ["--batch", "x"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2
    assert parser.parse_args(["--batch", "3", "--lr", "1e-4"]).lr == 1e-4


def test_atomic_checkpoint_leaves_no_temporary_and_old_file_survives_a_failed_write(tmp_path):
    path = tmp_path / "checkpoint.pt"
    common.save_checkpoint(path, {"step": 1})
    assert torch.load(path, weights_only=False)["step"] == 1

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        common.save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert torch.load(path, weights_only=False)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["checkpoint.pt"]


def test_rng_state_round_trip():
    common.seed_everything(5)
    state = common.rng_state()
    a = torch.rand(3), np.random.rand(), __import__("random").random()
    common.set_rng_state(state)
    b = torch.rand(3), np.random.rand(), __import__("random").random()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_device_choice():
    assert common.pick_device("cpu") == CPU
    assert common.pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda"):
            common.pick_device("cuda")
    with pytest.raises(SystemExit, match="--device"):
        common.pick_device("tpu9")


def test_runlog_stops_on_nonfinite_loss_with_the_step(tmp_path):
    log = common.RunLog(tmp_path, total_steps=10, every=2)
    log.add(8, loss_d=torch.tensor(0.5))
    assert log.step(2, 0)["loss_d"] == 0.5
    log.add(8, loss_d=torch.tensor(float("nan")))
    with pytest.raises(SystemExit, match="step 4"):
        log.step(4, 0)
    assert [r["step"] for r in common.read_log(tmp_path)] == [2]


def test_interpolation_walks_in_straight_lines():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    walk = common.interpolation_latents(a, b, steps=5).view(2, 5, 3)
    assert torch.allclose(walk[:, :, 0], torch.linspace(0, 1, 5).expand(2, 5))


def test_grid_gif_and_pngs(tmp_path):
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    common.save_grid(x, tmp_path / "a.png", nrow=3)
    common.save_grid(-x, tmp_path / "b.png", nrow=3)
    common.save_gif([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "p.gif")
    with Image.open(tmp_path / "p.gif") as gif:
        assert gif.n_frames == 2
    common.save_pngs(x, tmp_path / "gen")
    files = sorted(os.listdir(tmp_path / "gen"))
    assert files == [f"{i:06d}.png" for i in range(6)]
    with Image.open(tmp_path / "gen" / files[0]) as im:
        assert im.size == (28, 28)
