"""The data loaders on the fixtures, the offline error, and the small I/O helpers of common.py."""

import argparse
import os
import signal
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


def test_celeba_layout_center_crop(celeba_root, tmp_path):
    data = common.make_batches(data_args("celeba", celeba_root, 64, batch=4), CPU)
    assert data.channels == 3 and len(data.dataset) == 10
    assert next(data.batches(0)).shape == (4, 3, 64, 64)
    # CelebA's 178 x 218 faces with white bands in the top and bottom 12 rows: resizing the short side
    # to 64 and cropping the centre cuts about 20 rows off each end, bands and all; squashing the image
    # to 64 x 64, or cropping from the top, would keep them.
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    face = np.zeros((218, 178, 3), dtype=np.uint8)
    face[:12], face[-12:] = 255, 255
    for i in range(4):
        Image.fromarray(face).save(folder / f"{i + 1:06d}.jpg", quality=95)
    batch = next(common.make_batches(data_args("celeba", str(tmp_path), 64, batch=4), CPU).batches(0))
    assert batch.max() < -0.9, "a band of the top or bottom rows survived: not a centre crop"


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no .checkpoint.pt.tmp left


def test_a_checkpoint_is_on_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """fsync of the temporary file before the rename: after a power loss the rename may survive
    while unflushed data does not, and the "atomic" checkpoint would be an empty file."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd)
    )
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", 0)) or real_replace(a, b))
    common.save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1, "w": torch.ones(1000)})
    assert [e[0] for e in events][:2] == ["fsync", "replace"]
    assert events[0][1] == (tmp_path / "checkpoint.pt").stat().st_size  # the whole file was flushed


def test_rng_state_round_trip():
    common.seed_everything(5)
    state = common.rng_state(CPU)
    a = torch.rand(3), np.random.rand(), __import__("random").random()
    common.set_rng_state(state, CPU)
    b = torch.rand(3), np.random.rand(), __import__("random").random()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_a_cpu_run_saves_no_gpu_rng_state_even_where_gpus_are_visible(monkeypatch):
    """A CPU run's checkpoint must not depend on the GPUs of the machine that made it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)

    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU run read a GPU's random state")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", no_cuda)
    monkeypatch.setattr(torch.cuda, "get_rng_state", no_cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", no_cuda)
    monkeypatch.setattr(torch.cuda, "set_rng_state", no_cuda)
    state = common.rng_state(CPU)
    assert "cuda" not in state
    state["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as a GPU run saves it: ignored on the CPU
    common.set_rng_state(state, CPU)


def test_device_choice(monkeypatch):
    assert common.pick_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert common.pick_device("auto") == CPU
    with pytest.raises(SystemExit, match="--device cuda"):
        common.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.pick_device("auto") == torch.device("cuda")  # auto prefers a GPU
    with pytest.raises(SystemExit, match="--device"):
        common.pick_device("tpu9")


def test_amp_defaults_to_on_where_bfloat16_is_native(monkeypatch, float32_unless_asked):
    real = float32_unless_asked  # the real native_bf16 (conftest makes the others run float32)
    assert real(CPU, cpu_flags="flags : fpu sse avx2 avx512f avx512_bf16 amx_tile") is True
    assert real(CPU, cpu_flags="flags : fpu sse amx_bf16 amx_tile") is True
    assert real(CPU, cpu_flags="flags : fpu sse avx2 avx512f") is False
    assert real(torch.device("mps"), cpu_flags="avx512_bf16") is False
    monkeypatch.setattr(common, "native_bf16", lambda device, cpu_flags=None: True)
    assert common.amp_dtype(CPU, amp=None) is torch.bfloat16  # not given: the native default
    assert common.amp_dtype(CPU, amp=False) is None  # --no-amp wins
    monkeypatch.setattr(common, "native_bf16", lambda device, cpu_flags=None: False)
    assert common.amp_dtype(CPU, amp=None) is None


def test_amp_is_bfloat16_and_stops_on_a_gpu_without_it():
    assert common.amp_dtype(CPU, amp=False) is None
    assert common.amp_dtype(CPU, amp=True) is torch.bfloat16
    cuda = torch.device("cuda")
    assert common.amp_dtype(cuda, amp=True, bf16_supported=True) is torch.bfloat16
    assert common.amp_dtype(cuda, amp=False, bf16_supported=False) is None
    with pytest.raises(SystemExit, match="--amp: cuda has no bfloat16.*run without --amp"):
        common.amp_dtype(cuda, amp=True, bf16_supported=False)


def run_args(tmp_path, **kw):
    args = dict(device="cpu", seed=0, out=str(tmp_path), resume=None, max_steps=None, log_every=2, zdim=3)
    return argparse.Namespace(**{**args, **kw})


def test_run_restores_optimizer_state_but_keeps_this_runs_hyperparameters(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    run = common.Run(run_args(tmp_path), "x.py", ())
    run.track(net=net, opt=opt)
    run.save()

    resumed = common.Run(run_args(tmp_path, resume=str(tmp_path / "checkpoint.pt")), "x.py", ())
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(net2.parameters(), lr=5e-4, betas=(0.9, 0.99), eps=1e-6)
    resumed.track(net=net2, opt=opt2)
    assert torch.equal(net2.weight, net.weight)
    group = opt2.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (5e-4, (0.9, 0.99), 1e-6)  # this run's flags
    moments = opt.state[net.weight]["exp_avg"]
    torch.testing.assert_close(opt2.state[net2.weight]["exp_avg"], moments, rtol=0, atol=0)  # the saved state


def test_run_refuses_to_save_nonfinite_weights_and_keeps_the_last_checkpoint(tmp_path):
    net = torch.nn.Linear(3, 2)
    run = common.Run(run_args(tmp_path), "x.py", ())
    run.track(G=net)
    run.save()
    before = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["G"]["weight"].clone()
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    run.step = 7
    with pytest.raises(SystemExit, match="G has NaN or infinite weights at step 7"):
        run.save()
    assert torch.equal(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["G"]["weight"], before)


def test_run_generate_writes_pngs_chunk_by_chunk(tmp_path):
    sizes = []

    def sample(z):
        sizes.append(len(z))
        return torch.tanh(z[:, :1, None, None].expand(-1, 1, 4, 4))

    run = common.Run(run_args(tmp_path, generate=7), "x.py", ())
    run.generate(sample, zdim=3, chunk=3)
    assert sizes == [3, 3, 1]
    assert sorted(os.listdir(tmp_path / "generated")) == [f"{i:06d}.png" for i in range(7)]


def test_a_cpu_noise_generator_in_a_checkpoint_restores_its_stream(tmp_path):
    noise = torch.Generator().manual_seed(3)
    torch.randn(5, generator=noise)
    run = common.Run(run_args(tmp_path), "x.py", ())
    run.track(noise=noise)
    run.save()
    expected = torch.randn(4, generator=noise)
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)["noise"]
    assert state.device.type == "cpu"
    resumed = common.Run(run_args(tmp_path, resume=str(tmp_path / "checkpoint.pt")), "x.py", ())
    fresh = torch.Generator()
    resumed.track(noise=fresh)
    assert torch.equal(torch.randn(4, generator=fresh), expected)


def test_runlog_stops_on_nonfinite_loss_with_the_step(tmp_path):
    log = common.RunLog(tmp_path, total_steps=10, every=2)
    log.add(8, loss_d=torch.tensor(0.5))
    assert log.step(2, 0)["loss_d"] == 0.5
    log.add(8, loss_d=torch.tensor(float("nan")))
    with pytest.raises(SystemExit, match="step 4"):
        log.step(4, 0)
    assert [r["step"] for r in common.read_log(tmp_path)] == [2]


def test_interpolation_walks_in_straight_lines():
    """Row i walks from a[i] to b[i] in equal steps, every coordinate."""
    a, b = torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), torch.randn(2, 3)
    walk = common.interpolation_latents(a, b, steps=5).view(2, 5, 3)
    t = torch.linspace(0, 1, 5)[None, :, None]
    torch.testing.assert_close(walk, (1 - t) * a[:, None] + t * b[:, None])


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


def test_ema_update_is_a_warmed_up_moving_average_and_copies_batchnorm_statistics():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    average = common.average_of(net)
    assert not any(p.requires_grad for p in average.parameters())
    start = average[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.fill_(3.0)
    common.ema_update(average, net, decay=0.999, step=0)  # warm-up: d = 1/10, not 0.999
    torch.testing.assert_close(average[0].weight, 0.1 * start + 0.9 * net[0].weight)
    assert torch.equal(average[1].running_mean, net[1].running_mean)
    before = average[0].weight.clone()
    common.ema_update(average, net, decay=0.5, step=10_000)  # late: the decay itself
    torch.testing.assert_close(average[0].weight, 0.5 * before + 0.5 * net[0].weight)
    common.ema_update(average, net, decay=0.0, step=5)  # 0: the average is the network
    torch.testing.assert_close(average[0].weight, net[0].weight, rtol=0, atol=0)


def test_own_statistics_are_the_networks_own_batchnorm_statistics_and_are_put_back():
    """Inside: each BatchNorm's running mean and variance are those of the network's own outputs
    for z ~ N(0, I) (a Linear layer's: its bias and the squared norms of its rows), the network is
    in eval mode. Outside: the buffers (here, statistics of some other network), the momentum, the
    mode and the global random stream are as they were."""
    G = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        G[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 1]]))
        G[0].bias.copy_(torch.tensor([5.0, -1, 0, 2]))
        G[1].running_mean.fill_(100.0)
        G[1].running_var.fill_(1e-3)
        G[1].num_batches_tracked.fill_(1000)
    kept = {k: v.clone() for k, v in G.state_dict().items()}
    random_state = torch.random.get_rng_state()
    with common.own_statistics([G], zdim=3, device=torch.device("cpu"), seed=0):
        assert not G.training
        # 4,096 samples: standard errors of about 3 / 64 (mean) and 2% (variance); 4 of them allowed
        torch.testing.assert_close(G[1].running_mean, torch.tensor([5.0, -1, 0, 2]), rtol=0, atol=0.2)
        torch.testing.assert_close(G[1].running_var, torch.tensor([1.0, 4, 9, 3]), rtol=0.1, atol=0)
        out = G(torch.randn(2048, 3, generator=torch.Generator().manual_seed(1)))
        torch.testing.assert_close(out.mean(0), torch.zeros(4), rtol=0, atol=0.1)
    assert G.training and G[1].momentum == 0.1
    assert all(torch.equal(v, kept[k]) for k, v in G.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), random_state)
    plain = torch.nn.Linear(3, 2)  # nothing to recompute: a no-op
    with common.own_statistics([plain], zdim=3, device=torch.device("cpu")):
        assert plain.training


def test_an_average_missing_from_an_older_checkpoint_starts_from_the_network(tmp_path):
    net = torch.nn.Linear(3, 2)
    run = common.Run(run_args(tmp_path), "x.py", ())
    run.track(G=net)
    run.save()
    resumed = common.Run(run_args(tmp_path, resume=str(tmp_path / "checkpoint.pt")), "x.py", ())
    average = torch.nn.Linear(3, 2)
    resumed.track(G_ema=average)
    assert torch.equal(average.weight, net.weight)
    with pytest.raises(SystemExit, match="no 'D' in it"):
        resumed.track(D=torch.nn.Linear(3, 2))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_asks_to_stop_and_a_second_aborts_unless_under_torchrun(sig):
    with common.StopRequest(verbose=False) as stop:
        os.kill(os.getpid(), sig)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    with common.StopRequest(verbose=False, repeat_aborts=False) as stop:  # what Run uses under torchrun
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), sig)  # a scheduler's signal, then torchrun's copy of it
        assert stop.requested
    assert signal.getsignal(sig) != stop._handle  # the handlers are given back
