"""torchrun: every image script in 2 CPU processes (gloo), started as a user starts it.

Each run goes through tests/distributed_worker.py, which calls the script's real main() from a
folder of its process's own and keeps the trained networks, so a test can see what each process
holds and what each wrote. The processes reach each other on localhost only."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
TINY = ["--hidden_dim", "4", "--zdim", "8", "--device", "cpu", "--no-quality", "--log_every", "1"]
# in the launch of every script: bfloat16 autocast (the default where it is native) for half of them,
# float32 for the others (the Ctrl-C and batch-b tests train in float32)
BF16 = {"gan_mnist", "dcgan_classwise", "wgan_gp"}
BATCH_B = ["wgan_gp", "sn_dcgan"]  # the batch-b test's scripts


def script_args(name, data_root, batch=8, amp="--no-amp", out="run"):
    size = ["--image_size", "28" if name == "gan_mnist" else "16"]
    classes = ["--classes", "1,4"] if name == "dcgan_classwise" else []
    return ["--data_root", data_root, *TINY, amp, "--batch", str(batch), *size, *classes, "--out", out]


def worker(out, runs, freeze=False, quick_ada=False):
    """The worker's command line; `runs`: [(script, argv), ...], trained one after the other."""
    options = ["--freeze_g_statistics"] * freeze + ["--quick_ada"] * quick_ada
    words = [w for i, (name, argv) in enumerate(runs) for w in [*(["--then"] if i else []), name, *argv]]
    return [str(WORKER), str(out), *options, *words]


def command(out, runs, processes=2, freeze=False, quick_ada=False):
    """The worker under torchrun, `processes` of it."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launch, *worker(out, runs, freeze, quick_ada)]


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
if sys.platform == "linux":  # gloo on the loopback interface: a test machine may have no other network
    ENV["GLOO_SOCKET_IFNAME"] = "lo"


def nets(out, rank, name):
    return torch.load(out / f"nets_{rank}_{name}.pt", weights_only=True)


def rows_logged(out, run="run"):
    log = out / "rank0" / run / "log.csv"
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


def start_and_interrupt(cmd, out, after_rows=2, timeout=180):
    """Start a torchrun, wait for `after_rows` logged steps, then Ctrl-C it as a terminal would."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + timeout
    while rows_logged(out) < after_rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    return proc, proc.communicate(timeout=120)[0]


def assert_processes_agree_and_rank_1_wrote_nothing(out, name, run="run"):
    """Both processes hold the same weights, rank 1's folder is empty, and rank 0's checkpoint holds
    what was trained. Returns that checkpoint's path and contents."""
    a, b = nets(out, 0, name), nets(out, 1, name)
    assert a.keys() == b.keys()
    for net in a:
        for key, tensor in a[net].items():
            assert torch.equal(tensor, b[net][key]), f"{name}: {net}.{key} differs between the processes"
    assert list((out / "rank1").iterdir()) == [], "rank 1 wrote"  # in any of the launch's runs
    checkpoint = out / "rank0" / run / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=False)
    g = "G" if "G" in a else "G_1"
    for key, tensor in a[g].items():  # the checkpoint holds what was trained
        assert torch.equal(tensor, saved[g][key]), f"{name}: the checkpoint's {g}.{key} is not as trained"
    return checkpoint, saved


def assert_resumes_in_one_process(name, checkpoint, saved, out, capsys):
    """A torchrun's checkpoint needs no torchrun to resume: one more step in this process."""
    argv = ["--resume", str(checkpoint), "--max_steps", str(saved["step"] + 1)]
    importlib.import_module(name).main([*argv, "--device", "cpu", "--out", str(out)])
    alone = capsys.readouterr().out
    assert f"resumed from {checkpoint} at step {saved['step']}" in alone
    assert "2 processes" not in alone and "steps on cpu\n" in alone
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == saved["step"] + 1


def test_ctrl_c_stops_both_processes_at_one_step_and_rank_0_alone_writes(mnist_root, tmp_path, capsys):
    """Ctrl-C to torchrun: both processes stop at the same step with the same weights, while rank 0
    alone measures the in-training FID (the other waits for it); only rank 0 printed and wrote, and its
    checkpoint resumes in a single process. (Every script stops through the same common.Run code.)"""
    out = tmp_path / "two"
    argv = [*script_args("dcgan", mnist_root), "--epochs", "1000", "--quality"]
    proc, output = start_and_interrupt(command(out, [("dcgan", argv)]), out)
    assert output.count("2 processes") == 1, output  # rank 0 alone prints the start line
    assert "stopped at step" in output, output
    checkpoint, saved = assert_processes_agree_and_rank_1_wrote_nothing(out, "dcgan")
    assert saved["step"] >= 2 and saved["args"]["batch"] == 8 and saved["args"]["amp"] is False
    assert_resumes_in_one_process("dcgan", checkpoint, saved, tmp_path / "one", capsys)


def test_every_script_trains_alike_in_both_processes_and_rank_0_alone_writes(mnist_root, tmp_path, capsys):
    """Every script but sn_dcgan (whose two processes the batch-b test below holds to one process's
    weights), one after the other in one torchrun of 2 processes, 3 steps each, G's BatchNorm in
    training mode: same weights in both, rank 1 wrote nothing, and each checkpoint resumes in one
    process. Half of them train in bfloat16 autocast (the default where it is native), the others in
    float32."""
    names = [s for s in SCRIPTS if s != "sn_dcgan"]
    runs = []
    for name in names:
        amp = "--amp" if name in BF16 else "--no-amp"
        argv = script_args(name, mnist_root, amp=amp, out=name)
        runs.append((name, [*argv, "--max_steps", "3", "--epochs", "10"]))
    done = subprocess.run(command(tmp_path, runs), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    starts = [line for line in done.stdout.splitlines() if "2 processes" in line]
    for name in names:  # rank 0 alone prints each run's start line
        assert sum(line.startswith(f"{name}.py: ") for line in starts) == 1, done.stdout
        checkpoint, saved = assert_processes_agree_and_rank_1_wrote_nothing(tmp_path, name, run=name)
        assert saved["step"] == 3 and saved["args"]["batch"] == 8 and saved["args"]["amp"] == (name in BF16)
        assert_resumes_in_one_process(name, checkpoint, saved, tmp_path / f"one_{name}", capsys)


def test_two_processes_with_batch_b_train_as_one_with_batch_2b(mnist_root, tmp_path):
    """The gradient of the critic (with wgan_gp's penalty) averaged over 2 processes of batch b is the
    gradient of one process with batch 2b: same real images, same noise, same augmentation (each
    process draws its own share of one draw), same weights after 3 steps. wgan_gp and sn_dcgan in one
    torchrun, then both in one plain process; the two processes also agree and rank 1 wrote nothing.
    G's BatchNorm statistics are frozen in both runs (see distributed_worker.py). sn_dcgan runs with
    --augment_p ada, made to move fast (--quick_ada): p = 16 / 64 after step 2, from both processes'
    images, step 3 draws each image's coin at p = 0.25, and the checkpoint holds the signs of D on
    step 3's real images of both processes. Each run is then resumed to step 4 as it ran (torchrun or
    one process): the move at step 4 counts step 3's 8 images once, not once per process, so
    p = 32 / 64 in both."""
    names, close = BATCH_B, torch.testing.assert_close
    steps = ["--max_steps", "3", "--epochs", "10", "--augment", "color,translation,cutout"]
    ada = {"sn_dcgan": ["--augment_p", "ada"]}

    def runs(batch):
        return [
            (name, [*script_args(name, mnist_root, batch=batch, out=name), *steps, *ada.get(name, [])])
            for name in names
        ]

    two = subprocess.run(
        command(tmp_path / "two", runs(4), freeze=True, quick_ada=True),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run(
        [sys.executable, *worker(tmp_path / "one", runs(8), freeze=True, quick_ada=True)],  # one process
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert one.returncode == 0, one.stdout + one.stderr
    for name in names:
        assert_processes_agree_and_rank_1_wrote_nothing(tmp_path / "two", name, run=name)
        a = torch.load(tmp_path / "two" / "rank0" / name / "checkpoint.pt", weights_only=False)
        b = torch.load(tmp_path / "one" / "rank0" / name / "checkpoint.pt", weights_only=False)
        assert a["step"] == b["step"] == 3
        if name in ada:  # p moved at step 2; the sums since: step 3's 8 images
            assert b["augment"][0] == 0.25 and b["augment"][2] == 8
            assert torch.equal(a["augment"], b["augment"]), (a["augment"], b["augment"])
        for net in ("G", "D"):
            for key, tensor in b[net].items():
                if tensor.is_floating_point():
                    close(a[net][key], tensor, rtol=0, atol=1e-5, msg=f"{name} {net}.{key}")
        for opt in ("opt_g", "opt_d"):  # Adam's moments see the gradients' scale, which its steps hide
            assert any(state["exp_avg"].abs().max() > 0 for state in b[opt]["state"].values()), opt
            for i, state in b[opt]["state"].items():
                for moment in ("exp_avg", "exp_avg_sq"):
                    got, want = a[opt]["state"][i][moment], state[moment]
                    close(got, want, rtol=1e-3, atol=1e-9, msg=f"{name}: {opt} {moment}")
    resumed = {}
    for run, launch in (("two", command), ("one", lambda *a, **k: [sys.executable, *worker(*a, **k)])):
        saved = tmp_path / run / "rank0" / "sn_dcgan" / "checkpoint.pt"
        argv = ["--resume", str(saved), "--max_steps", "4", "--device", "cpu", "--out", "sn_dcgan"]
        more = launch(tmp_path / f"{run}_resumed", [("sn_dcgan", argv)], freeze=True, quick_ada=True)
        done = subprocess.run(more, capture_output=True, text=True, env=ENV, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        checkpoint = tmp_path / f"{run}_resumed" / "rank0" / "sn_dcgan" / "checkpoint.pt"
        resumed[run] = torch.load(checkpoint, weights_only=False)["augment"]
    assert resumed["one"].tolist() == resumed["two"].tolist() == [0.5, 0.0, 0.0], resumed


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 through /proc (Linux)")
def test_a_process_that_dies_takes_the_run_down_with_a_message(mnist_root, tmp_path):
    """Kill rank 1 mid-run: torchrun ends the run with an error naming the failure, not a hang."""
    out = tmp_path / "run"
    argv = [*script_args("dcgan", mnist_root), "--epochs", "1000"]
    proc = subprocess.Popen(
        command(out, [("dcgan", argv)]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    deadline = time.monotonic() + 180
    while rows_logged(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    rank1 = [pid for pid in worker_pids(out) if environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]  # a hang would time out here
    assert proc.returncode != 0
    assert "FAILED" in output or "Failures" in output, output


def worker_pids(out):
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(WORKER).encode() in cmdline and str(out).encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def environ(pid):
    try:
        pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)
