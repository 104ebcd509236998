"""benchmarks/throughput.py: both variants are timed, and every monkeypatch is undone afterwards."""

import importlib.util
import sys

import pytest
from conftest import PER_CLASS, ROOT

import common


def load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module
    spec.loader.exec_module(module)
    return module


def test_both_variants_timed_and_patches_restored(mnist_root, capsys):
    import gan_mnist

    throughput = load_benchmark()
    originals = {
        "make_batches": common.make_batches,
        "TensorBatches": common.TensorBatches,
        "batches": common.TensorBatches.batches,
        "add": common.RunLog.add,
        "save_grid": common.save_grid,
        "save_checkpoint": common.save_checkpoint,
        "sample": gan_mnist.sample,
    }
    flags = ["--scripts", "gan_mnist", "--data_root", mnist_root, "--batch", "16", "--hidden_dim", "8"]
    timing = ["--warmup", "1", "--steps", "2", "--repeats", "1", "--profile", "--no-options"]
    rows = throughput.main([*flags, *timing])

    measured = {r["variant"]: r for r in rows if isinstance(r["images_per_s"], float)}
    assert set(measured) >= {"fast", "DataLoader + .item()"}
    for r in measured.values():
        assert r["images_per_s"] > 0 and r["ms_per_g_step"] > 0
        assert r["batch"] == 16 and r["image_size"] == 28
    assert measured["DataLoader + .item()"]["ratio"] == 1.0
    assert 0 < measured["fast"]["data_pct"] < 100
    table = capsys.readouterr().out
    assert "| gan_mnist | 28 px | 16 | fast |" in table
    assert "| gan_mnist | 28 px | 16 | DataLoader + .item() |" in table

    assert common.make_batches is originals["make_batches"]
    assert common.TensorBatches is originals["TensorBatches"]
    assert common.TensorBatches.batches is originals["batches"]
    assert common.RunLog.add is originals["add"]
    assert common.save_grid is originals["save_grid"]
    assert common.save_checkpoint is originals["save_checkpoint"]
    assert gan_mnist.sample is originals["sample"]


def test_patches_restored_when_the_run_fails(mnist_root):
    """An exception inside the instrumented run (a script that crashes) still leaves common as it was."""
    import torch

    import gan_mnist

    throughput = load_benchmark()
    add, make_batches, tensor_batches = common.RunLog.add, common.make_batches, common.TensorBatches
    with pytest.raises(RuntimeError, match="the script crashed"):
        with throughput.instrumented(gan_mnist, torch.device("cpu"), 1, 1, True, mnist_root, 0, False):
            assert common.RunLog.add is not add and common.make_batches is not make_batches
            raise RuntimeError("the script crashed")
    assert common.RunLog.add is add and common.make_batches is make_batches
    assert common.TensorBatches is tensor_batches and gan_mnist.sample.__name__ == "sample"


CHATTY = """
import signal, sys, time
from pathlib import Path
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
for i in range(4000):
    print("step", i, "x" * 60, flush=True)  # about 270 KB: four times a pipe's buffer
Path(__file__).with_name("printed").write_text("after the stop" if stop else "before the stop")
deadline = time.time() + 30
while not stop and time.time() < deadline:
    time.sleep(0.05)
"""


def test_quality_benchmark_does_not_stall_a_chatty_run(tmp_path, monkeypatch):
    """A run that prints more than a pipe holds must not block before its budget ends: the
    benchmark once read the console only at the end, and a 30-minute run sat still after 25."""
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    (tmp_path / "chatty.py").write_text(CHATTY)
    monkeypatch.setattr(quality, "ROOT", tmp_path)
    wall = quality.train_for("chatty", 3 / 60, "unused", tmp_path / "out", [])
    assert (tmp_path / "printed").read_text() == "before the stop" and 2.5 < wall < 30


def test_a_quality_record_names_the_part_of_the_data_a_run_trained_on(mnist_root):
    """With --train_images the record's data says how many of the folder's digits trained: the
    400-digit records of an earlier day said 'MNIST, 4,000 training digits'."""
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    whole = 10 * PER_CLASS
    assert quality.data_label(mnist_root) == f"MNIST, {whole:,} training digits"
    for flags in ("--train_images 40 --augment cutout", "--augment cutout --train_images=40"):
        assert quality.data_label(mnist_root, flags) == f"MNIST, 40 of {whole:,} training digits"


def test_the_sampling_benchmark_records_five_ways_to_sample_one_checkpoint(mnist_root, tmp_path, monkeypatch):
    """benchmarks/sampling.py --record: one record per checkpoint, its five figures measured (the
    average on the statistics the checkpoint holds and on its own differ), with the run's steps."""
    import json
    import math

    import dcgan

    out = tmp_path / "r"
    tiny = ["--hidden_dim", "8", "--batch", "16", "--zdim", "16", "--device", "cpu", "--image_size", "16"]
    dcgan.main(["--data_root", mnist_root, *tiny, "--max_steps", "3", "--out", str(out), "--no-quality"])
    spec = importlib.util.spec_from_file_location("sampling_bench", ROOT / "benchmarks" / "sampling.py")
    sampling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sampling)
    monkeypatch.setenv("GAN_RESULTS_DIR", str(tmp_path / "results"))
    sampling.main(
        [str(out / "checkpoint.pt"), "--data_root", mnist_root, "--record", "--flags", "--max_steps 3"]
    )
    (record,) = [
        json.loads(line) for line in (tmp_path / "results" / "sampling.jsonl").read_text().splitlines()
    ]
    assert (record["script"], record["flags"], record["steps"]) == ("dcgan", "--max_steps 3", 3)
    fids = record["metrics"]
    assert list(fids) == ["G_ema_eval_bn", "G_ema_own_bn", "G_ema_batch_bn", "G_eval_bn", "G_batch_bn"]
    assert all(math.isfinite(f) and f > 0 for f in fids.values())
    assert fids["G_ema_own_bn"] != fids["G_ema_eval_bn"]
