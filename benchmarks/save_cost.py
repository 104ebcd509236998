"""What a checkpoint costs: the seconds of one save of each script's checkpoint at its default flags,
and the share of a run's time that --save_minutes' default interval gives it.

Each image script's own main() trains one step in-process with its default flags on synthetic
MNIST-format digits (dcgan also at 64 px with --hidden_dim 128, the CelebA setting of its page), which
leaves the checkpoint a run saves; then common.save_checkpoint writes that checkpoint again
--repeats times (temporary file, flush, fsync, rename, fsync of the folder: what every save does),
and the median is recorded with the checkpoint's size.

    python benchmarks/save_cost.py                  # every image script
    python benchmarks/save_cost.py --repeats 9

Appends one record to results/save_cost.jsonl (--no-record skips it), rendered into
docs/distributed.md by benchmarks/report.py.
"""

import argparse
import contextlib
import importlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
from layout import synthetic_mnist  # noqa: E402

import common  # noqa: E402

CASES = [
    ("gan_mnist", []),
    ("dcgan", []),
    ("dcgan", ["--image_size", "64", "--hidden_dim", "128"]),
    ("dcgan_classwise", []),
    ("wgan", []),
    ("wgan_gp", []),
    ("sn_dcgan", []),
]


def save_seconds(script, flags, data_root, repeats):
    """(median seconds of one save, checkpoint bytes) of `script` with `flags` after one step."""
    module = importlib.import_module(script)
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        argv = ["--data_root", data_root, "--device", "cpu", "--no-quality", "--max_steps", "1", "--out", out]
        module.main([*argv, *flags])
        path = Path(out) / "checkpoint.pt"
        ckpt = torch.load(path, weights_only=False)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            common.save_checkpoint(path, ckpt)
            times.append(time.perf_counter() - start)
        return statistics.median(times), path.stat().st_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="saves timed per script (default 5)")
    parser.add_argument("--note", default=None, help="one line for the record")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--results", default=None, help="records folder (default results/; $GAN_RESULTS_DIR)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        synthetic_mnist(root)
        for script, flags in CASES:
            seconds, size = save_seconds(script, flags, root, args.repeats)
            share = seconds / (common.SAVE_MINUTES * 60)
            rows.append(dict(script=script, flags=" ".join(flags), seconds=round(seconds, 4), bytes=size,
                             share_at_default=share))  # fmt: skip
    record = records.new_record("save_cost", "cpu", save_minutes=common.SAVE_MINUTES, rows=rows)
    if args.note:
        record["note"] = args.note
    if args.record:
        records.append(record, args.results)
    print(f"| script | flags | checkpoint | one save | share at --save_minutes {common.SAVE_MINUTES:g} |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['script']} | {r['flags'] or 'defaults'} | {r['bytes'] / 1e6:.1f} MB | "
            f"{r['seconds']:.3f} s | {100 * r['share_at_default']:.3f}% |"
        )
    return record


if __name__ == "__main__":
    main()
