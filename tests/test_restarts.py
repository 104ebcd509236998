"""Machines that go away: `--resume auto` (the same command again continues the run), checkpoints on
a clock (`--save_minutes`), SIGTERM's exit status, and torchrun `--max-restarts` after a process of the
job is killed with SIGKILL: in each case the run ends with the weights of a run that was never stopped."""

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distributed import ENV, environ
from test_faults import assert_same, stop_with

import common

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden_dim", "4", "--zdim", "8", "--device", "cpu", "--no-quality", "--no-amp"]


def dcgan_args(data_root, *more):
    return ["--data_root", data_root, *TINY, "--image_size", "16", *more]


def trained(path):
    """Everything a run trains, from its checkpoint: G, D, G's average and both optimizers."""
    ckpt = torch.load(path, weights_only=False)
    return {name: ckpt[name] for name in ("G", "D", "G_ema", "opt_g", "opt_d")}


@pytest.mark.parametrize("name", ["dcgan"])
def test_the_same_command_with_resume_auto_continues_a_preempted_run_bit_for_bit(
    name, mnist_root, tmp_path, monkeypatch, capsys
):
    module = importlib.import_module(name)
    base = dcgan_args(mnist_root, "--batch", "8")
    base += ["--max_steps", "20"]  # dcgan: 15 batches an epoch, so the resumed run passes an epoch end
    module.main([*base, "--out", str(tmp_path / "whole")])
    again = [*base, "--resume", "auto", "--out", str(tmp_path / "auto")]
    with monkeypatch.context() as m:
        stop_with(m, signal.SIGTERM, at_step=3)  # a scheduler preempts the job
        with pytest.raises(SystemExit) as end:
            module.main(again)
    assert end.value.code == common.EXIT_PREEMPTED == 143
    first = capsys.readouterr().out
    assert "--resume auto: no checkpoint, a fresh start" in first and "stopped at step 3" in first
    module.main(again)  # the requeued job: the very same command
    second = capsys.readouterr().out
    assert "--resume auto: resumed at step 3" in second and "done at step 20" in second
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    auto = torch.load(tmp_path / "auto" / "checkpoint.pt", weights_only=False)
    auto["args"]["resume"], auto["args"]["resumed_auto"] = whole["args"]["resume"], None
    whole["args"]["resumed_auto"] = None
    whole.pop("elapsed"), auto.pop("elapsed")
    assert_same(whole, auto, "checkpoint")


def test_resume_auto_refuses_a_checkpoint_of_another_script_or_other_shapes_and_keeps_it(
    mnist_root, tmp_path
):
    wgan, dcgan = importlib.import_module("wgan"), importlib.import_module("dcgan")
    out = tmp_path / "run"
    wgan.main([*dcgan_args(mnist_root, "--batch", "8"), "--max_steps", "1", "--out", str(out)])
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="written by wgan.py"):
        dcgan.main([*dcgan_args(mnist_root), "--resume", "auto", "--out", str(out)])
    with pytest.raises(SystemExit, match="this run asks for --hidden_dim 8"):
        wgan.main([*dcgan_args(mnist_root), "--hidden_dim", "8", "--resume", "auto", "--out", str(out)])
    assert (out / "checkpoint.pt").read_bytes() == before


def log_rows(out):
    log = Path(out) / "log.csv"
    return common.read_log(out) if log.exists() and len(log.read_text().splitlines()) > 1 else []


def rank1_of(out):
    """The pid of the process of rank 1 of the torchrun job writing to `out` (Linux: /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if (
                b"dcgan.py" in cmdline
                and str(out).encode() in cmdline
                and environ(entry.name).get("RANK") == "1"
            ):
                return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds rank 1 through /proc (Linux)")
def test_torchrun_restarts_a_killed_process_and_the_run_ends_as_if_never_killed(mnist_root, tmp_path):
    """2 processes (gloo), --max-restarts 1: rank 1 SIGKILLed mid-epoch (no signal handler runs, no
    save on the way out); the checkpoint it left is at most --save_minutes (0.1 s) and a step behind
    the last logged step; torchrun restarts the group, both processes resume from that checkpoint
    (--resume auto), and the job exits 0 with the weights of a job never killed, bit for bit."""
    argv = [*dcgan_args(mnist_root, "--batch", "2", "--log_every", "1"), "--max_steps", "40"]
    argv += ["--save_minutes", "0.0017", "--resume", "auto"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    launch += ["--max-restarts=1", str(ROOT / "dcgan.py")]
    whole = subprocess.run([*launch, *argv, "--out", str(tmp_path / "whole")], capture_output=True, env=ENV)
    assert whole.returncode == 0, whole.stderr.decode()[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*launch, *argv, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    # the kill comes after a save on the clock and a few steps: on a fast machine 8 steps take under
    # the 0.1 s of --save_minutes, so a count of rows alone can kill before the first checkpoint
    deadline, ckpt_path = time.monotonic() + 120, out / "checkpoint.pt"
    while (len(log_rows(out)) < 8 or not ckpt_path.exists()) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint on the clock in 120 s"
        time.sleep(0.02)
    victim = rank1_of(out)
    assert proc.poll() is None and victim, "the job ended before it could be killed"
    os.kill(victim, signal.SIGKILL)
    rows, ckpt = log_rows(out), torch.load(ckpt_path, weights_only=False)  # before the restart
    assert ckpt["step"] % 30 != 0  # 30 global batches of 4 an epoch: a save on the clock, not an epoch's
    seconds = {int(r["step"]): float(r["elapsed_s"]) for r in rows}
    step_time = max(b - a for a, b in zip(list(seconds.values()), list(seconds.values())[1:]))
    assert seconds[max(seconds)] - seconds[ckpt["step"]] <= 0.0017 * 60 + 2 * step_time
    try:
        output = proc.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:  # a hang: show where the job stood
        proc.kill()
        output = proc.communicate()[0]
        raise AssertionError(f"the job hung after rank 1 was killed:\n{output[-5000:]}") from None
    assert proc.returncode == 0, output[-3000:]
    assert "--resume auto: resumed at step" in output and "done at step 40" in output, output[-3000:]
    assert_same(trained(tmp_path / "whole" / "checkpoint.pt"), trained(out / "checkpoint.pt"), "checkpoint")


@pytest.mark.parametrize("share, saved", [(0, [1, 2, 3, 4, 5]), (1e9, [1, 5])])
def test_a_checkpoint_goes_with_an_epochs_grid_only_while_it_is_cheap(
    share, saved, mnist_root, tmp_path, monkeypatch
):
    """On a small folder an epoch is a step or two: a checkpoint at each would be most of the run's time.
    With each grid a checkpoint is written once SAVE_SHARE times the last save's cost has passed (the
    first always; share 0: at every epoch's end); the grids are every epoch's all the same, and the
    last step saves. A spy on the atomic write records the steps; it writes them as before."""
    monkeypatch.setattr(common, "SAVE_SHARE", share)
    steps, write = [], common.save_checkpoint
    monkeypatch.setattr(
        common, "save_checkpoint", lambda path, state: (steps.append(state["step"]), write(path, state))
    )
    out = tmp_path / "run"  # 120 digits in batches of 120: an epoch is a step
    argv = dcgan_args(
        mnist_root, "--batch", "120", "--max_steps", "5", "--save_minutes", "0", "--out", str(out)
    )
    importlib.import_module("dcgan").main(argv)
    assert steps == saved
    assert len(list((out / "samples").glob("epoch_*.png"))) == 5  # every epoch has its grid
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 5
