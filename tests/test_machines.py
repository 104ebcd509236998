"""What a GPU machine, a checkpoint moved between machines, and torchrun on several machines need,
tested on the CPU: through the real scripts where the CPU can run the path, through the decision
functions (with the GPU's answers given to them) where only a GPU could.

A mock here stands in for CUDA or torch.distributed (which this machine has not, or not in that
version), never for the function under test."""

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import common
import dcgan
import dcgan_classwise
import evaluate
import gan_gaussian

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden_dim", "8", "--batch", "16", "--zdim", "16", "--image_size", "16", "--no-quality"]
A_GPU_MACHINES_FLAGS = dict(
    device="cuda:3", amp=True, compile=True, sync_bn=True, deterministic=True, workers=7
)


# -- 1. a checkpoint travels: the machine's flags are this run's, the model's the checkpoint's ----------
@pytest.fixture
def gpu_checkpoint(mnist_root, tmp_path):
    """A real CPU checkpoint of dcgan whose saved flags say it was trained on cuda:3 with --amp --compile
    --sync_bn --deterministic --workers 7, as one from a GPU machine would."""
    out = tmp_path / "gpu_run"
    dcgan.main(["--data_root", mnist_root, *SMALL, "--max_steps", "1", "--device", "cpu", "--out", str(out)])
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["args"].update(A_GPU_MACHINES_FLAGS)
    torch.save(ckpt, path)
    return path


def test_resume_takes_the_models_flags_from_the_checkpoint_and_the_machines_from_this_run(gpu_checkpoint):
    parser = dcgan.build_parser()
    args = common.parse_args(parser, ["--resume", str(gpu_checkpoint), "--generate", "4"])
    assert (args.device, args.amp, args.compile, args.sync_bn) == ("auto", None, False, False)
    assert (args.deterministic, args.workers) == (False, None)
    assert (args.hidden_dim, args.zdim, args.image_size, args.quality) == (8, 16, 16, False)  # the model's
    asked = common.parse_args(parser, ["--resume", str(gpu_checkpoint), "--amp", "--device", "cpu"])
    assert (asked.amp, asked.device) == (True, "cpu")  # written again, they are this run's too


def test_a_gpu_checkpoint_resumes_generates_and_evaluates_on_the_cpu(gpu_checkpoint, tmp_path, capsys):
    dtypes = set()

    def record(module, inputs, output):
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:  # the checkpoint's --amp is not this run's: float32 on this CPU (conftest: bf16 is not native)
        G, _ = dcgan.main(["--resume", str(gpu_checkpoint), "--max_steps", "2", "--device", "cpu"])
    finally:
        hook.remove()
    assert dtypes == {torch.float32}
    resumed = torch.load(gpu_checkpoint, weights_only=False)
    assert resumed["step"] == 2 and resumed["args"]["device"] == "cpu" and not resumed["args"]["compile"]
    assert resumed["args"]["hidden_dim"] == 8 and G.image_shape == (1, 16, 16)  # the saved model flags won
    resumed["args"].update(A_GPU_MACHINES_FLAGS)  # as if the resumed run had been on the GPU again
    torch.save(resumed, gpu_checkpoint)

    out = tmp_path / "laptop"
    dcgan.main(["--resume", str(gpu_checkpoint), "--generate", "5", "--device", "cpu", "--out", str(out)])
    assert sorted(p.name for p in (out / "generated").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    capsys.readouterr()
    result = evaluate.main([str(gpu_checkpoint), "--n", "24", "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out) == result
    assert result["n_fake"] == 24 and result["fid"] > 0


# -- 2 and 6. bfloat16 from the training GPU's compute capability, on older torch too ---------------------
def test_bf16_is_native_from_compute_capability_8_of_the_training_gpu(float32_unless_asked, monkeypatch):
    native_bf16 = float32_unless_asked  # the real one (conftest makes the others run float32)
    assert not common.cuda_bf16(torch.device("cuda"), capability=(7, 5))  # T4
    assert not common.cuda_bf16(torch.device("cuda"), capability=(7, 0))  # V100
    assert common.cuda_bf16(torch.device("cuda"), capability=(8, 0))  # A100
    assert common.cuda_bf16(torch.device("cuda"), capability=(9, 0))  # H100
    # an older torch's is_bf16_supported has no including_emulation keyword; GPU 0 a T4, GPU 3 an A100
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: {0: (7, 5), 3: (8, 0)}[d.index])
    assert native_bf16(torch.device("cuda", 3)) and not native_bf16(torch.device("cuda", 0))
    assert common.amp_dtype(torch.device("cuda", 3), amp=True) is torch.bfloat16
    with pytest.raises(SystemExit, match="--amp: cuda:0 has no bfloat16 support"):
        common.amp_dtype(torch.device("cuda", 0), amp=True)


def test_cuda_n_without_torchrun_becomes_the_current_device(monkeypatch):
    made_current = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", made_current.append)
    assert common.start_processes(torch.device("cuda", 3)) == torch.device("cuda", 3)
    common.start_processes(torch.device("cuda"))  # no index: the current device stays as it is
    common.start_processes(torch.device("cpu"))
    assert made_current == [torch.device("cuda", 3)]


def test_torchrun_makes_its_gpu_current_before_joining_nccl(monkeypatch):
    """No device_id= for init_process_group (a torch 2.3 keyword that can hang NCCL in 2.6 to 2.7.0):
    set_device(cuda:LOCAL_RANK) comes first, so NCCL and the barriers use this process's GPU."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda *a, **kw: calls.append(("init", a, kw))
    )
    assert common.start_processes(torch.device("cuda")) == torch.device("cuda", 1)
    expected = [
        ("set_device", torch.device("cuda", 1)),
        ("init", ("nccl",), dict(timeout=common.PROCESS_GROUP_TIMEOUT)),
    ]
    assert calls == expected


# -- 3. --compile with --sync_bn ------------------------------------------------------------------------
def test_compile_with_sync_bn_is_refused_in_one_line(mnist_root, tmp_path):
    argv = ["--data_root", mnist_root, *SMALL, "--max_steps", "1", "--device", "cpu", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"^error: --compile with --sync_bn: [^\n]*$"):
        dcgan.main([*argv, "--compile", "--sync_bn"])
    assert not (tmp_path / "checkpoint.pt").exists()


# -- 4. torchrun's first run: one download per file system, a long wait on the CPU ------------------------
def test_download_turns_rank_0_then_each_other_machine_then_the_rest():
    assert common.download_turn(rank=0, local_rank=0) == 0
    assert [common.download_turn(r, r) for r in (1, 2, 3)] == [2, 2, 2]  # one machine
    assert [common.download_turn(r, r % 4) for r in (4, 5, 8)] == [1, 2, 1]  # 4 processes a machine


WAITER = """
import os, sys, time
from datetime import timedelta
import torch
sys.path.insert(0, {root!r})
import common
rank, folder = int(sys.argv[1]), sys.argv[2]
os.environ.update(LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
load = common._load_mnist
def slow_download(*args):
    started = time.time()
    if rank == 0:
        time.sleep(2.5)  # 2.5 times the process group's timeout: a slow download
    result = load(*args)
    open(os.path.join(folder, f"read_{{rank}}"), "w").write(f"{{started}} {{time.time()}}")
    return result
common._load_mnist = slow_download
open(os.path.join(folder, f"ready_{{rank}}"), "w").close()
while not all(os.path.exists(os.path.join(folder, f"ready_{{r}}")) for r in (0, 1)):
    time.sleep(0.05)
store = torch.distributed.FileStore(os.path.join(folder, "store"), 2)
one_second = timedelta(seconds=1)
torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=one_second)
images, labels = common.load_tensor_dataset("mnist", {data!r}, 28, in_turn=True)
print(tuple(images.shape))
torch.distributed.destroy_process_group()
"""


def test_torchrun_processes_wait_for_rank_0s_download_beyond_the_group_timeout(mnist_root, tmp_path):
    script = tmp_path / "waiter.py"
    script.write_text(textwrap.dedent(WAITER.format(root=str(ROOT), data=mnist_root)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("(120, 1, 28, 28)" in out for out in outputs), outputs
    rank_0_done = float((tmp_path / "read_0").read_text().split()[1])
    rank_1_started = float((tmp_path / "read_1").read_text().split()[0])
    assert rank_1_started >= rank_0_done  # rank 1 read only after rank 0 had downloaded


# -- 7. noise and data reach a GPU without a host-device sync per step ------------------------------------
def test_noise_drawn_on_the_cpu_goes_to_a_gpu_pinned_and_without_blocking():
    assert common.pinned(torch.device("cuda")) and common.pinned(torch.device("cuda", 1))
    assert not common.pinned(torch.device("cpu")) and not common.pinned(torch.device("mps"))


def test_a_pairs_noise_on_the_cpu_is_its_generators_stream(mnist_root, tmp_path):
    """On the CPU the draws stay what they were: resume and the per-class seeds stay exact."""
    args = common.parse_args(
        dcgan_classwise.build_parser(), [*SMALL, "--device", "cpu", "--out", str(tmp_path)]
    )
    run = common.Run(args, dcgan_classwise.SCRIPT, dcgan_classwise.SHAPE_FLAGS)
    mine, same = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(run.randn(5, 16, generator=mine), torch.randn(5, 16, generator=same))
    assert mine.get_state().equal(same.get_state())


class Copies(TorchDispatchMode):
    """Counts the copies of a tensor from one device to another."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default and args[0].device != out.device:
            self.count += 1
        return out


def test_gaussian_real_batches_copy_the_shuffle_to_the_device_once_an_epoch():
    """One copy per epoch (one host-device sync on a GPU), not one per batch; 'meta' stands in for the GPU."""
    args = argparse.Namespace(mean=3.0, std=1.0, train_size=640, dims=1, batch=64, seed=0)
    data = gan_gaussian.NormalSamples(args, torch.device("meta"))
    with Copies() as copies:
        batches = list(data.batches(epoch=0))
    assert len(batches) == 10 and all(b.shape == (64, 1) and b.device.type == "meta" for b in batches)
    assert copies.count == 1


# -- 8. channels_last only where it helps ---------------------------------------------------------------
def test_channels_last_for_conv_nets_on_the_cpu_and_under_bfloat16_autocast_on_cuda(monkeypatch):
    cuda, cpu, mps = torch.device("cuda"), torch.device("cpu"), torch.device("mps")
    assert common.conv_memory_format(cuda, conv=True, amp=torch.bfloat16) is torch.channels_last
    assert common.conv_memory_format(cuda, conv=True, amp=None) is torch.contiguous_format  # --no-amp
    assert common.conv_memory_format(cuda, conv=False, amp=torch.bfloat16) is torch.contiguous_format
    for amp in (torch.bfloat16, None):  # measured faster on the CPU in both (benchmarks/layout.py)
        assert common.conv_memory_format(cpu, conv=True, amp=amp) is torch.channels_last
    assert common.conv_memory_format(cpu, conv=False, amp=None) is torch.contiguous_format  # gan_mnist's MLPs
    assert common.conv_memory_format(mps, conv=True, amp=None) is torch.contiguous_format
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    no_amp = argparse.Namespace(amp=False, deterministic=False)
    assert common.setup_backends(cuda, no_amp) is torch.contiguous_format


# -- what a careful read found after items 1-8 ------------------------------------------------------------
def test_the_quality_classifier_leaves_a_training_gpus_generator_alone(mnist_root, monkeypatch):
    """Training the evaluation classifier mid-run (the first run on a data set) seeds the CPU's
    generator inside a fork: torch.manual_seed would also reseed every GPU's, and a --seed run on a GPU
    would draw other noise than the same command once the classifier is cached. So would a
    dcgan_classwise pair's initialisation."""
    args = common.parse_args(dcgan_classwise.build_parser(), [*SMALL, "--device", "cpu", "--classes", "3"])
    run = common.Run(args, dcgan_classwise.SCRIPT, dcgan_classwise.SHAPE_FLAGS)  # seeds all, at its start
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    evaluate.train_classifier("mnist", mnist_root, epochs=1)
    dcgan_classwise.Pair(run, 3, 1)
    assert reseeded == []


def test_the_weights_checksum_is_exact_and_free_of_summation_order():
    """The processes compare one checksum per tensor: the same for the same values summed in any order
    (a GPU model's reduction order), different when a single bit of one weight differs."""
    w = torch.randn(1000) * torch.logspace(-8, 8, 1000)
    assert torch.equal(common.checksum(w), common.checksum(w[torch.randperm(1000)]))
    assert torch.equal(common.checksum(w), common.checksum(w.view(10, 100).t()))  # any layout too
    flipped = w.clone()
    flipped.view(torch.int32)[500] ^= 1  # the last bit of one weight
    assert not torch.equal(common.checksum(w), common.checksum(flipped))


def test_the_quality_classifier_computes_in_full_float32_on_a_gpu():
    """cuDNN may round float32 convolutions to TF32 on a GPU (PyTorch's default): the classifier's
    features, and so every FID, would then differ from the CPU's. It turns that off while it runs and
    gives the caller's setting back."""
    net = evaluate.Classifier(1, 28)
    seen = []
    net.features[0].register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    before = torch.backends.cudnn.allow_tf32
    evaluate.classifier_outputs(net, torch.zeros(3, 1, 28, 28, dtype=torch.uint8))
    assert seen == [False] and torch.backends.cudnn.allow_tf32 == before


def test_a_signal_during_the_last_save_is_a_stop_request_not_an_interrupt(
    mnist_root, tmp_path, monkeypatch, capsys
):
    """Under torchrun the agent sends each process its own SIGINT, one after another: a process can
    get its own after the processes have agreed to stop and left the loop, while they save together.
    It must stay a request (as under the loop), not interrupt that save with KeyboardInterrupt. Here
    one process gets its signal as finish() begins; the caller's handler is back afterwards."""
    callers = []

    def callers_handler(*_):
        callers.append("SIGINT")

    previous = signal.signal(signal.SIGINT, callers_handler)
    try:
        finish = common.Run.finish

        def finish_after_a_late_signal(run, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            return finish(run, *args, **kwargs)

        monkeypatch.setattr(common.Run, "finish", finish_after_a_late_signal)
        dcgan.main(
            ["--data_root", mnist_root, *SMALL, "--device", "cpu", "--max_steps", "2", "--out", str(tmp_path)]
        )
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    out = capsys.readouterr().out
    assert callers == [] and "Ctrl-C: finishing this step" in out and "stopped at step 2" in out
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
    assert after is callers_handler
