"""What holds for every script alike: it runs when copied alone with common.py into an empty folder,
and the convolutional ones train the same in channels_last memory format as in the usual layout."""

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gan_gaussian", "gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
TINY = ["--hidden_dim", "4", "--batch", "8", "--zdim", "8", "--device", "cpu"]


def train_args(name, data_root):
    if name == "gan_gaussian":
        return ["--device", "cpu"]
    size = ["--image_size", "28" if name == "gan_mnist" else "16"]
    classes = ["--classes", "1,4"] if name == "dcgan_classwise" else []
    return ["--data_root", data_root, *TINY, *size, *classes]


# One Python process runs every copy, one after the other (a process start and torch's import cost
# seconds each); before each, it moves into the copy's folder and forgets `common` and the script,
# so each imports the common.py beside it and nothing else.
ALONE = """
import contextlib, io, os, runpy, sys, traceback
for folder, name, train, generate, log in JOBS:
    os.chdir(folder)
    for module in ("common", name):
        sys.modules.pop(module, None)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            for argv in (train, generate):
                sys.argv = [name + ".py", *argv]
                runpy.run_path(name + ".py", run_name="__main__")
        status = "ok"
    except BaseException:
        status = traceback.format_exc()
    with open(log, "w") as f:
        f.write(status + chr(10) + out.getvalue())
"""


@pytest.fixture(scope="module")
def copied_alone(mnist_root, tmp_path_factory):
    """{script: (its folder, what it printed)} after one step, a checkpoint and --generate from it,
    each in a folder holding only the script and common.py."""
    root = tmp_path_factory.mktemp("alone")
    jobs = []
    for name in SCRIPTS:
        alone = root / name
        alone.mkdir()
        for f in (f"{name}.py", "common.py"):
            shutil.copy(ROOT / f, alone / f)
        train = [*train_args(name, mnist_root), "--max_steps", "1", "--out", "run"]
        generate = ["--resume", "run/checkpoint.pt", "--generate", "3", "--device", "cpu", "--out", "run"]
        jobs.append((str(alone), name, train, generate, str(root / f"{name}.log")))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"JOBS = {jobs!r}\n{ALONE}"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: (root / name, (root / f"{name}.log").read_text()) for name in SCRIPTS}


@pytest.mark.parametrize("name", SCRIPTS)
def test_runs_when_copied_alone_with_common(name, copied_alone):
    """One step, a checkpoint, then --generate from it, in a folder holding only the two files."""
    alone, output = copied_alone[name]
    assert output.startswith("ok"), output[-3000:]
    assert (alone / "run" / "checkpoint.pt").is_file()
    made = list((alone / "run").rglob("generated*"))
    assert made, "--generate wrote nothing"
    if name != "gan_gaussian":  # no evaluate.py beside it: it trains and says the figure is skipped
        assert "no evaluate.py beside common.py: training without the quality figure" in output
    assert sorted(os.listdir(alone)) == sorted(["common.py", f"{name}.py", "run"])  # nothing else needed


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_says_its_default_in_help(name):
    """`--help` is where the pages send a user for every default: each flag's help names it, and a
    number or word default is written as it is (a changed default with a stale help fails here)."""
    parser = importlib.import_module(name).build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag, text, value = action.option_strings[-1], action.help or "", action.default
        assert "default" in text.lower(), f"{name} {flag}: {text!r} names no default"
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            forms = {str(value), f"{value:g}"} if isinstance(value, float) else {str(value)}
            alone = [rf"(?<![\w.]){re.escape(f)}(?![\w.])" for f in forms]  # 0.99 is not in 0.999
            assert any(re.search(f, text) for f in alone), f"{name} {flag}: default {value!r} not in {text!r}"


def one_step(name, data_root, out, monkeypatch, memory_format, precision):
    """One generator step of the real script, its networks and batches in `memory_format`: the
    gradient of every parameter at each optimizer step. (Weights would not do: Adam's and RMSprop's
    first steps move each weight by about lr whatever the size of its gradient, so a wrong gradient
    of the right sign goes unseen.)"""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    monkeypatch.setattr(common, "setup_backends", lambda device, args, conv=True: memory_format)
    module = importlib.import_module(name)
    amp = "--amp" if precision == "bfloat16" else "--no-amp"
    grads = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: grads.extend(
            p.grad.detach().clone()
            for group in opt.param_groups
            for p in group["params"]
            if p.grad is not None
        )
    )
    try:
        module.main(
            [*train_args(name, data_root), amp, "--no-quality", "--max_steps", "1", "--out", str(out)]
        )
    finally:
        hook.remove()
    return grads


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"])
def test_channels_last_computes_the_gradients_of_the_contiguous_layout(
    name, precision, mnist_root, tmp_path, monkeypatch
):
    """CUDA trains the conv nets in channels_last; the gradients must not change with the layout
    beyond the rounding of another summation order: float32's, or bfloat16's 8-bit mantissa."""
    seen = []
    real_conv = torch.nn.Conv2d.forward

    def record(self, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return real_conv(self, x)

    plain = one_step(name, mnist_root, tmp_path / "plain", monkeypatch, torch.contiguous_format, precision)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", record)
    last = one_step(name, mnist_root, tmp_path / "last", monkeypatch, torch.channels_last, precision)
    assert any(seen)  # the discriminator really saw channels_last batches
    assert len(plain) == len(last) and plain
    rounding = 1e-4 if precision == "float32" else 2**-6
    for i, (value, other) in enumerate(zip(plain, last)):
        scale = value.abs().max().item()
        torch.testing.assert_close(other, value, rtol=rounding, atol=rounding * scale, msg=f"gradient {i}")


@pytest.mark.parametrize("name", ["dcgan", "gan_mnist", "dcgan_classwise"])
def test_quality_over_training_is_logged_each_epoch_and_plotted(name, mnist_root, tmp_path):
    """The classifier FID of 1,000 fixed samples in log.csv at each epoch's end and at the last step."""
    module = importlib.import_module(name)
    batches = 120 // 8 if name != "dcgan_classwise" else 12 // 8  # 120 images; 12 per class
    steps = 2 * batches + 1
    module.main([*train_args(name, mnist_root), "--max_steps", str(steps), "--out", str(tmp_path)])
    rows = common.read_log(tmp_path)
    measured = [int(r["step"]) for r in rows if "fid" in r]
    # the first epoch's end and the last step; between them epoch ends, as the ~3% budget allows
    assert measured[0] == batches and measured[-1] == steps and set(measured) <= {batches, 2 * batches, steps}
    assert all(r["fid"] > 0 for r in rows if "fid" in r)
    assert (tmp_path / "quality.png").is_file()
    module.main(
        [*train_args(name, mnist_root), "--max_steps", "2", "--no-quality", "--out", str(tmp_path / "n")]
    )
    assert not any("fid" in r for r in common.read_log(tmp_path / "n"))
    assert not (tmp_path / "n" / "quality.png").exists()


def generated(name, ckpt_path, out):
    """The PNG bytes that --generate writes from a checkpoint (every class's, for dcgan_classwise)."""
    module = importlib.import_module(name)
    module.main(["--resume", str(ckpt_path), "--generate", "4", "--device", "cpu", "--out", str(out)])
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("generated/*.png"))}


@pytest.mark.parametrize("name", ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"])
def test_every_image_script_samples_from_the_average_of_g_not_g(name, mnist_root, tmp_path):
    """--generate (and the grids and the quality figure, which sample through the same function)
    read G's average: swapping G's weights leaves the samples as they are, swapping the average's
    changes them."""
    module = importlib.import_module(name)
    module.main(
        [*train_args(name, mnist_root), "--max_steps", "3", "--ema", "0.5", "--out", str(tmp_path / "r")]
    )
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    averages = [k for k in ckpt if k.startswith("G_ema")]
    assert averages
    samples = generated(name, tmp_path / "r" / "checkpoint.pt", tmp_path / "a")
    assert len(samples) == 4 * (2 if name == "dcgan_classwise" else 1)

    def shaken(state):  # other weights of the same shapes
        noise = torch.Generator().manual_seed(0)
        return {
            k: v + torch.randn(v.shape, generator=noise) if v.is_floating_point() else v
            for k, v in state.items()
        }

    other_g = dict(ckpt, **{k.replace("_ema", ""): shaken(ckpt[k.replace("_ema", "")]) for k in averages})
    torch.save(other_g, tmp_path / "g.pt")
    assert generated(name, tmp_path / "g.pt", tmp_path / "b") == samples

    other_average = dict(ckpt, **{k: shaken(ckpt[k]) for k in averages})
    torch.save(other_average, tmp_path / "avg.pt")
    changed = generated(name, tmp_path / "avg.pt", tmp_path / "c")
    assert changed.keys() == samples.keys() and all(changed[k] != samples[k] for k in samples)
