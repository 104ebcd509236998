"""What holds for every script alike: it runs when copied alone with common.py into an empty folder,
and the convolutional ones train the same in channels_last memory format as in the usual layout."""

import importlib
import os
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


@pytest.mark.parametrize("name", SCRIPTS)
def test_runs_when_copied_alone_with_common(name, mnist_root, tmp_path):
    """One step, a checkpoint, then --generate from it, in a folder holding only the two files."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in (f"{name}.py", "common.py"):
        shutil.copy(ROOT / f, alone / f)
    train = [*train_args(name, mnist_root), "--max_steps", "1", "--out", "run"]
    generate = ["--resume", "run/checkpoint.pt", "--generate", "3", "--device", "cpu", "--out", "run"]
    code = (
        "import runpy, sys\n"
        f"for argv in ({train!r}, {generate!r}):\n"
        f"    sys.argv = [{name + '.py'!r}, *argv]\n"
        f"    runpy.run_path({name + '.py'!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=alone, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (alone / "run" / "checkpoint.pt").is_file()
    made = list((alone / "run").rglob("generated*"))
    assert made, "--generate wrote nothing"
    if name != "gan_gaussian":  # no evaluate.py beside it: it trains and says the figure is skipped
        assert "no evaluate.py beside common.py: training without the quality figure" in r.stdout
    assert sorted(os.listdir(alone)) == sorted(["common.py", f"{name}.py", "run"])  # nothing else needed


def trained_weights(name, data_root, out, monkeypatch, memory_format):
    """Two generator steps of the real script, its networks and batches in `memory_format`."""
    monkeypatch.setattr(common, "setup_backends", lambda device, args, conv=True: memory_format)
    module = importlib.import_module(name)
    module.main([*train_args(name, data_root), "--max_steps", "2", "--out", str(out)])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return {k: v for k, v in ckpt.items() if isinstance(v, dict) and k.startswith(("G", "D"))}


@pytest.mark.parametrize("name", ["dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"])
def test_channels_last_trains_like_the_contiguous_layout(name, mnist_root, tmp_path, monkeypatch):
    """CUDA trains the conv nets in channels_last; the maths must not change with the layout."""
    seen = []
    real_conv = torch.nn.Conv2d.forward

    def record(self, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return real_conv(self, x)

    plain = trained_weights(name, mnist_root, tmp_path / "plain", monkeypatch, torch.contiguous_format)
    monkeypatch.setattr(torch.nn.Conv2d, "forward", record)
    last = trained_weights(name, mnist_root, tmp_path / "last", monkeypatch, torch.channels_last)
    assert any(seen)  # the discriminator really saw channels_last batches
    assert plain.keys() == last.keys() and plain
    for net in plain:
        for key, value in plain[net].items():
            if value.is_floating_point():
                torch.testing.assert_close(last[net][key], value, rtol=1e-4, atol=1e-4, msg=f"{net}.{key}")


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


def test_every_image_script_samples_from_an_average_of_g():
    for name in ("gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"):
        args = importlib.import_module(name).build_parser().parse_args(["--ema", "0.9"])
        assert args.ema == 0.9
