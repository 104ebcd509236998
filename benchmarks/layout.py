"""Memory layout of the conv scripts on this machine: channels_last (NHWC) against contiguous (NCHW).

Each conv script's own main() trains in-process with its default flags on synthetic MNIST-format
digits (the layout does not change with the pixels), its networks and batches in one layout or the
other, and the time of --steps generator updates after --warmup ones is read from its log.csv
(elapsed_s, which leaves start-up, grids and checkpoints out). The two layouts run interleaved,
--repeats times, in float32 (--no-amp) and in bfloat16 autocast (--amp); the table gives the median
seconds per generator step and the ratio channels_last / contiguous (below 1: channels_last faster).

    python benchmarks/layout.py                         # every conv script, both precisions
    python benchmarks/layout.py --scripts dcgan --repeats 5

Each run appends one record to results/layout.jsonl (--no-record skips it), rendered into
docs/speed.md by benchmarks/report.py. Time it alone: two runs on the same cores slow each other.
"""

import argparse
import contextlib
import importlib
import io
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
from mnist_subset import write_idx  # noqa: E402

import common  # noqa: E402

SCRIPTS = ("dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan")
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = {"float32": "--no-amp", "bfloat16": "--amp"}


def synthetic_mnist(root, n=2000):
    """n random 28 x 28 digits with labels in torchvision's MNIST files (speed only: pixels don't matter)."""
    rng = np.random.default_rng(0)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
    for split, count in (("train", n), ("t10k", n // 10)):
        write_idx(raw / f"{split}-images-idx3-ubyte", images[:count])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[:count])


def seconds_per_step(script, layout, precision, data_root, warmup, steps):
    """One measurement: elapsed_s between the log rows of step `warmup` and of the last step, per step."""
    module = importlib.import_module(script)
    real = common.setup_backends
    common.setup_backends = lambda device, args, conv=True: LAYOUTS[layout]
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            argv = [
                "--data_root",
                data_root,
                "--out",
                out,
                "--device",
                "cpu",
                "--no-quality",
                "--epochs",
                "1000",
            ]
            argv += [PRECISIONS[precision], "--max_steps", str(warmup + steps), "--log_every", str(warmup)]
            module.main(argv)
            rows = {int(r["step"]): r["elapsed_s"] for r in common.read_log(out)}
    finally:
        common.setup_backends = real
    return (rows[warmup + steps] - rows[warmup]) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scripts", default=",".join(SCRIPTS), help="comma-separated (default: all conv scripts)"
    )
    parser.add_argument(
        "--warmup", type=common.positive_int, default=5, help="untimed steps first (default 5)"
    )
    parser.add_argument(
        "--steps", type=common.positive_int, default=20, help="timed generator steps (default 20)"
    )
    parser.add_argument(
        "--repeats", type=common.positive_int, default=3, help="interleaved repeats (default 3)"
    )
    parser.add_argument("--no-record", dest="record", action="store_false", help="append no results record")
    args = parser.parse_args(argv)
    scripts = args.scripts.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as data_root:
        synthetic_mnist(data_root)
        for script in scripts:
            for precision in PRECISIONS:
                times = {layout: [] for layout in LAYOUTS}
                for _ in range(args.repeats):
                    for layout in LAYOUTS:
                        t = seconds_per_step(script, layout, precision, data_root, args.warmup, args.steps)
                        times[layout].append(t)
                median = {layout: statistics.median(t) for layout, t in times.items()}
                ratios = [last / plain for last, plain in zip(times["channels_last"], times["contiguous"])]
                row = dict(script=script, precision=precision, repeats=args.repeats)
                row.update({f"{k}_s_per_step": v for k, v in median.items()})
                row.update(ratio=median["channels_last"] / median["contiguous"], pair_ratios=ratios)
                rows.append(row)
                print(
                    f"{script:16s} {precision:9s} contiguous {median['contiguous']:.3f} s/step  "
                    f"channels_last {median['channels_last']:.3f} s/step  ratio {row['ratio']:.3f}  "
                    f"(pairs {', '.join(f'{r:.2f}' for r in ratios)})",
                    flush=True,
                )
    if args.record:
        flags = f"--warmup {args.warmup} --steps {args.steps} --repeats {args.repeats}"
        path = records.append(
            records.new_record("layout", data="synthetic MNIST, 2,000 images", flags=flags, rows=rows)
        )
        print(f"recorded in {path}")
    return rows


if __name__ == "__main__":
    main()
