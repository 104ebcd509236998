"""Fixtures every test may use: data in the real on-disk formats, and no network.

- `mnist_root`: tiny MNIST and Fashion-MNIST IDX files that torchvision.datasets.MNIST reads.
  Image i of class c has a bright horizontal bar at row 2 + 2c (`bar_class` reads it back),
  so a test can tell from the pixels which class a batch came from.
- `cifar_root`: CIFAR-10's python pickles (cifar-10-batches-py/data_batch_1..5), same idea:
  the class is in the brightness of the red channel (`red_class`).
- `folder_root`: a nested folder of RGB PNG and JPEG images of different sizes.
- `celeba_root`: torchvision's CelebA layout, root/celeba/img_align_celeba/*.jpg, 178 x 218.
"""

import os
import pickle
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_CLASS = 12  # images per class in the MNIST fixture: 120 in all

# pytest-xdist runs the suite in one worker per core (pyproject.toml: -n auto). Each worker, and every
# script it starts, then gets its share of the cores: torch's default of one thread per core in every
# worker would put 2 threads on each core, and OpenMP threads that wait on each other run slower than
# one. (Set before torch is imported; a value the caller set is kept.)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(share))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Tests never touch the network: any connection or name lookup fails at once."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """--amp defaults to on where bfloat16 is native (this CPU or not): in-process tests run float32
    unless they pass --amp, so they mean the same on every CPU. (native_bf16 is tested on its own.)"""
    import common

    real = common.native_bf16
    monkeypatch.setattr(common, "native_bf16", lambda device, cpu_flags=None: False)
    return real  # for the test of native_bf16 itself


@pytest.fixture(autouse=True)
def quiet_cwd(tmp_path, monkeypatch):
    """Each test runs in its own folder, so default outputs (runs/, data/) never land in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    """Benchmarks append results records; in tests they go to a temporary folder, never results/."""
    monkeypatch.setenv("GAN_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    code = {1: 0x0801, 3: 0x0803}[array.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", code))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def bar_images(labels, size=28, seed=0):
    """Class c: a bright bar on row 2 + 2c of a dark, slightly noisy 28 x 28 image."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, size=(len(labels), size, size)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    return images


def bar_class(image):
    """Which class made this MNIST-fixture image (28 x 28, any value range): its brightest row pair."""
    rows = np.asarray(image, dtype=np.float64).reshape(28, 28).mean(axis=1)
    return int((np.argmax(rows) - 2) // 2)


def make_mnist(root, per_class=PER_CLASS):
    labels = np.repeat(np.arange(10), per_class)
    np.random.default_rng(1).shuffle(labels)
    images = bar_images(labels)
    for name in ("MNIST", "FashionMNIST"):
        raw = Path(root) / name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        write_idx(raw / "train-images-idx3-ubyte", images)
        write_idx(raw / "train-labels-idx1-ubyte", labels)
        write_idx(raw / "t10k-images-idx3-ubyte", images[:20])
        write_idx(raw / "t10k-labels-idx1-ubyte", labels[:20])
    return labels


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist")
    make_mnist(root)
    return str(root)


def red_class(image_chw):
    """Class of a CIFAR-fixture image in [-1, 1] or [0, 255]: its red channel's mean level."""
    red = np.asarray(image_chw, dtype=np.float64)[0]
    if red.max() <= 1.0:
        red = (red + 1) * 127.5
    return int(round((red.mean() - 20) / 20))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(1, 6):
        labels = [int(x) for x in rng.integers(0, 10, size=20)]
        data = np.zeros((20, 3, 32, 32), dtype=np.uint8)
        for j, c in enumerate(labels):
            data[j, 0] = 20 + 20 * c
            data[j, 1:] = rng.integers(0, 255, size=(2, 32, 32))
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": data.reshape(20, -1), "labels": labels}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data.reshape(20, -1), "labels": labels}, f)
    return str(root)


def random_image(rng, width, height, mode="RGB"):
    channels = 3 if mode == "RGB" else 1
    array = rng.integers(0, 255, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory):
    """12 RGB images, PNG and JPEG, in nested folders, of sizes other than the training size."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(3)
    for i in range(12):
        sub = root / ("cats" if i % 2 else "dogs") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext = "png" if i % 2 else "jpg"
        random_image(rng, 40 + 3 * i, 50 + i).save(sub / f"img{i}.{ext}")
    (root / "notes.txt").write_text("not an image")
    return str(root)


@pytest.fixture(scope="session")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(10):
        random_image(rng, 178, 218).save(folder / f"{i + 1:06d}.jpg")
    return str(root)


def run_script(script, args, timeout=300):
    """Run a script as a user would, in a fresh interpreter with the network refused."""
    import subprocess

    code = (
        "import socket, runpy, sys\n"
        "def refuse(*a, **k): raise OSError('network disabled in tests')\n"
        "socket.socket.connect = refuse; socket.getaddrinfo = refuse\n"
        f"sys.argv = [{script!r}] + {list(args)!r}\n"
        f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )


def count_steps(main, argv, monkeypatch):
    """Train with main(argv), recording which network each optimizer step moved ("G", or "D" for the
    discriminator / critic) and the epoch of each real batch drawn, without replacing either."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import common

    steps, drawn = [], []
    original = common.TensorBatches.batches

    def counting(self, epoch, start=0):
        for x in original(self, epoch, start):
            drawn.append(epoch)
            yield x

    monkeypatch.setattr(common.TensorBatches, "batches", counting)
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(opt))
    try:
        G, _ = main(argv)
    finally:
        hook.remove()
    g_params = {id(p) for p in G.parameters()}
    return ["G" if id(o.param_groups[0]["params"][0]) in g_params else "D" for o in steps], drawn


def generate_with_other_statistics(main, checkpoint, tmp_path, n):
    """--generate n from `checkpoint`, and from a copy whose G_ema holds other (absurd) BatchNorm
    statistics: the two lists of PNG files' bytes."""
    import torch

    ckpt = torch.load(checkpoint, weights_only=False)
    for key, value in ckpt["G_ema"].items():
        if key.endswith("running_mean"):
            value.fill_(50.0)
        elif key.endswith("running_var"):
            value.fill_(1e-4)
    torch.save(ckpt, tmp_path / "other_statistics.pt")
    pngs = []
    for path, folder in ((checkpoint, "a"), (tmp_path / "other_statistics.pt", "b")):
        main(
            ["--resume", str(path), "--generate", str(n), "--device", "cpu", "--out", str(tmp_path / folder)]
        )
        pngs.append([(tmp_path / folder / "generated" / f"{i:06d}.png").read_bytes() for i in range(n)])
    return pngs
