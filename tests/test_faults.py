"""The run contract under faults, for every script and in both precisions a user runs: float32
(--no-amp) and bfloat16 autocast (--amp, the default where bfloat16 is native).

- A stop (Ctrl-C's SIGINT, or SIGTERM from a scheduler) asked during step k saves a checkpoint of
  step k, and resuming it ends bit for bit where a run never stopped ends: G, D, the average of G
  that every sample comes from, the optimizers, the fixed noise and the random state.
- A loss that turns NaN stops the run naming the step where it did, not the next log row's, and
  leaves the last checkpoint as it was.
"""

import importlib
import math
import os
import signal

import numpy as np
import pytest
import torch

import common

IMAGE_SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
PRECISIONS = {"float32": "--no-amp", "bfloat16": "--amp"}
CASES = [(name, p) for name in IMAGE_SCRIPTS for p in PRECISIONS] + [("gan_gaussian", "float32")]
SKIP = {"args", "elapsed"}  # this run's flags and clock: the only things a resumed run may differ in


# a batch, and the steps a run makes, so that the stop at step 2 is no epoch's end and the run to
# STEPS crosses one (resumed mid-epoch, then a reshuffle): 120 digits; wgan and wgan_gp draw 5 real
# batches per step, dcgan_classwise 12 digits per class; gan_gaussian 640 samples, batch 64
BATCH = {"wgan": 8, "wgan_gp": 8, "dcgan_classwise": 4, "gan_gaussian": 64}
STEPS = {"wgan": 4, "wgan_gp": 4, "dcgan_classwise": 4, "gan_gaussian": 12}


def script_args(name, data_root, precision):
    """Tiny networks and data, this precision."""
    if name == "gan_gaussian":
        return ["--device", "cpu", "--train_size", "640", "--log_every", "50"]
    size = ["--image_size", "28" if name == "gan_mnist" else "16"]
    batch = ["--batch", str(BATCH.get(name, 16))] + (
        ["--classes", "1,4"] if name == "dcgan_classwise" else []
    )
    tiny = ["--hidden_dim", "4", "--zdim", "8", "--no-quality", "--log_every", "50"]
    return ["--data_root", data_root, *tiny, *size, *batch, PRECISIONS[precision], "--device", "cpu"]


def machine_args(name, precision):
    """What a resumed run names itself: its machine (the model's flags come from the checkpoint)."""
    return ["--device", "cpu"] + ([] if name == "gan_gaussian" else [PRECISIONS[precision]])


def assert_same(a, b, where):
    if isinstance(a, dict):
        assert set(a) - SKIP == set(b) - SKIP, where
        for k in set(a) - SKIP:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def stop_with(monkeypatch, sig, at_step):
    """Send `sig` to this process at the end of step `at_step`, as a user or a scheduler would."""
    step_done = common.Run.step_done

    def signalling(self, *args, **kwargs):
        step_done(self, *args, **kwargs)
        if self.step == at_step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(common.Run, "step_done", signalling)


@pytest.mark.parametrize(("name", "precision"), CASES)
def test_a_stop_saves_its_step_and_resuming_it_is_exact_to_the_bit(
    name, precision, mnist_root, tmp_path, monkeypatch, capsys
):
    module = importlib.import_module(name)
    base, steps = script_args(name, mnist_root, precision), str(STEPS.get(name, 9))
    module.main([*base, "--max_steps", steps, "--out", str(tmp_path / "whole")])
    sig = signal.SIGINT if precision == "float32" else signal.SIGTERM

    with monkeypatch.context() as m:
        stop_with(m, sig, at_step=2)
        if sig == signal.SIGINT:  # the user asked: a normal end
            module.main([*base, "--max_steps", steps, "--out", str(tmp_path / "stopped")])
        else:  # a scheduler's preemption: saved, then the exit status that says "not finished"
            with pytest.raises(SystemExit) as end:
                module.main([*base, "--max_steps", steps, "--out", str(tmp_path / "stopped")])
            assert end.value.code == common.EXIT_PREEMPTED == 143
    assert "stopped at step 2" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2  # the step at which the stop was asked, not an epoch end's

    resume = ["--resume", str(tmp_path / "stopped" / "checkpoint.pt"), "--max_steps", steps]
    module.main([*resume, *machine_args(name, precision)])
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    assert whole["step"] == resumed["step"] == int(steps) and whole["epoch"] >= 1
    averages = [k for k in whole if k.startswith("G_ema")]
    if name != "gan_gaussian":  # the average of G, which every sample comes from, is saved and is not G
        assert averages
        for k in averages:
            G = whole[k.replace("_ema", "")]
            assert any(not torch.equal(v, G[p]) for p, v in whole[k].items()), k
    assert_same(whole, resumed, "checkpoint")


@pytest.mark.parametrize(("name", "precision"), CASES)
def test_a_nan_loss_stops_naming_its_step_and_keeps_the_last_checkpoint(
    name, precision, mnist_root, tmp_path, monkeypatch
):
    module = importlib.import_module(name)
    out = tmp_path / "r"
    module.main([*script_args(name, mnist_root, precision), "--max_steps", "2", "--out", str(out)])
    good = torch.load(out / "checkpoint.pt", weights_only=False)

    bad_step, done = 5, {"steps": 0}  # from step 5 on, every real batch holds a NaN
    running, next_batch = common.Run.running, common.BatchReader.next

    def counting(self):
        done["steps"] = self.step
        return running(self)

    def poisoned(self):
        x = next_batch(self)
        return x * math.nan if done["steps"] + 1 >= bad_step else x

    monkeypatch.setattr(common.Run, "running", counting)
    monkeypatch.setattr(common.BatchReader, "next", poisoned)
    resume = ["--resume", str(out / "checkpoint.pt"), *machine_args(name, precision), "--max_steps", "40"]
    with pytest.raises(SystemExit, match=rf"became nan at step {bad_step};"):
        module.main(resume)
    kept = torch.load(out / "checkpoint.pt", weights_only=False)
    assert kept["step"] < bad_step
    nets = [v for k, v in kept.items() if k.startswith(("G", "D")) and isinstance(v, dict)]
    assert nets and all(t.isfinite().all() for net in nets for t in net.values() if t.is_floating_point())
    if kept["step"] == good["step"]:
        assert_same(good, kept, "checkpoint")
