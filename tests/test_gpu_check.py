"""benchmarks/gpu_check.py runs green on the CPU at a tiny size, so it is known to work before a GPU is at
hand, and a failing row is reported with its error line and a non-zero exit."""

import json
import sys

import torch
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_gpu_check_on_the_cpu_passes_every_row_and_records_them(tmp_path, capsys):
    """Two scripts (the MLP and a convolutional one; every script's own paths are its tests'): each
    row kind but --compile (GPU only), evaluate.py and throughput.py."""
    scripts = ["gan_mnist", "dcgan"]
    code = gpu_check.main(["--device", "cpu", "--scripts", ",".join(scripts), "--results", str(tmp_path)])
    table = capsys.readouterr().out
    record = json.loads((tmp_path / "gpu_check.jsonl").read_text())
    rows = {(r["script"], r["variant"]): r for r in record["rows"]}
    failed = [r for r in record["rows"] if r["result"] != "passed"]
    assert code == 0 and not failed, failed
    for script in scripts:
        for variant in ("defaults", "--resume", "--generate"):
            assert (script, variant) in rows
        assert rows[(script, "defaults")]["images_per_s"] > 0
    assert not any(variant == "--compile" for _, variant in rows)
    assert ("evaluate.py", "dcgan checkpoint") in rows and ("throughput.py", "dcgan, wgan_gp") in rows
    assert record["kind"] == "gpu_check" and record["machine"]["device"] == "cpu"
    assert "| dcgan | --resume |" in table


def test_a_failing_row_is_reported_with_its_error(tmp_path, capsys):
    code = gpu_check.main(
        ["--device", "cpu", "--scripts", "dcgan", "--steps", "0", "--results", str(tmp_path)]
    )
    record = json.loads((tmp_path / "gpu_check.jsonl").read_text())
    dcgan = [r for r in record["rows"] if r["script"] == "dcgan" and r["variant"] == "defaults"][0]
    assert code == 1
    assert "--max_steps" in dcgan["result"]  # the script's own one-line message naming the flag


def test_without_a_gpu_it_stops_at_once_and_records_nothing(tmp_path, monkeypatch, capsys):
    """No GPU table unless a GPU ran it: --device cuda on a machine without one writes no record."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    assert gpu_check.main(["--device", "cuda", "--results", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.jsonl").exists()
