"""Sample quality at fixed wall-clock budgets: train a script for M minutes, stop it as Ctrl-C would,
then measure its checkpoint with evaluate.py (classifier FID, KID, precision, recall).

    python benchmarks/quality.py dcgan --data_root DIR --minutes 8            # one script
    python benchmarks/quality.py all --data_root DIR --minutes 2 4 8          # every image script
    python benchmarks/quality.py dcgan --data_root DIR --minutes 4 --flags="--amp"   # script flags

Each budget is its own run from scratch (not checkpoints of one long run), so a figure is exactly
what a user gets who trains that long. Prints one JSON line per run and a Markdown table at the end:
script, minutes, FID, KID, precision, recall, generator steps, images/s, the machine. Time your
runs alone: two trainings on the same cores halve each other's speed.
"""

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]


def train_for(script, minutes, data_root, out, extra):
    """Run the script until `minutes` have passed, then SIGINT (it saves its checkpoint and exits)."""
    cmd = [sys.executable, str(ROOT / f"{script}.py"), "--data_root", data_root, "--out", str(out)]
    cmd += ["--epochs", "100000", "--no-quality", *extra]
    start = time.perf_counter()
    # the console goes to a file, not a pipe: a pipe nobody reads fills up (64 KB) and blocks the
    # script's next print, so a long run would sit still while its clock ran on
    with tempfile.TemporaryFile("w+") as console:
        proc = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, text=True)
        try:
            proc.wait(timeout=minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
        console.seek(0)
        output = console.read()
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed:\n{output[-3000:]}")
    return time.perf_counter() - start


def measure(checkpoint, data_root, n, device):
    cmd = [sys.executable, str(ROOT / "evaluate.py"), str(checkpoint), "--data_root", data_root]
    cmd += ["--n", str(n), "--device", device, "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"evaluate.py failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def last_log_row(out):
    import csv

    with open(Path(out) / "log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("images_per_s")]
    return rows[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=[*SCRIPTS, "all"])
    parser.add_argument("--data_root", required=True, help="MNIST folder (torchvision layout)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[8.0], help="budgets (default 8)")
    parser.add_argument("--n", type=int, default=1000, help="samples to measure (default 1000)")
    parser.add_argument("--device", default="cpu", help="training and evaluation device (default cpu)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--flags", default="", help='flags for the script, one string: "--amp --batch 64"')
    args = parser.parse_args(argv)
    scripts = SCRIPTS if args.script == "all" else [args.script]
    keep = Path(args.out or tempfile.mkdtemp(prefix="quality_"))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.device}"
    rows = []
    for script in scripts:
        for minutes in args.minutes:
            out = keep / f"{script}_{minutes:g}min"
            extra = ["--device", args.device, *shlex.split(args.flags)]
            wall = train_for(script, minutes, args.data_root, out, extra)
            log = last_log_row(out)
            metrics = measure(out / "checkpoint.pt", args.data_root, args.n, args.device)
            row = dict(script=script, minutes=minutes, wall_s=round(wall, 1), steps=int(float(log["step"])))
            row.update({k: metrics[k] for k in ("fid", "kid", "precision", "recall") if k in metrics})
            row.update(images_per_s=float(log["images_per_s"]), flags=args.flags, machine=machine)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| script | minutes | FID | KID | precision | recall | G steps | images/s | flags |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['script']} | {r['minutes']:g} | {r['fid']:.1f} | {r['kid']:.3f} | {r['precision']:.2f} | "
            f"{r['recall']:.2f} | {r['steps']} | {r['images_per_s']:.0f} | {r['flags']} |"
        )
    print(f"\nmachine: {machine}; runs kept in {keep}")
    return rows


if __name__ == "__main__":
    main()
