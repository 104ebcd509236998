"""Sample quality at fixed wall-clock budgets: train a script for M minutes, stop it as Ctrl-C would,
then measure its checkpoint with evaluate.py (classifier FID, KID, precision, recall).

    python benchmarks/quality.py dcgan --data_root DIR --minutes 8            # one script
    python benchmarks/quality.py all --data_root DIR --minutes 2 4 8          # every image script
    python benchmarks/quality.py dcgan --data_root DIR --minutes 4 --flags="--amp"   # script flags

    python benchmarks/quality.py gan_gaussian                                  # its default run, whole
    python benchmarks/quality.py real --data_root DIR                          # real held-out digits

Each budget is its own run from scratch, so a figure is exactly what a user gets who trains that
long. With --chain the budgets are marks of one run instead: it is stopped at each mark, measured, and
resumed with --resume auto (resume is exact, so the state at 15 minutes of a 30-minute run is a 15-minute
run's; each resume costs the run its start-up, a few seconds, inside its budget):

    python benchmarks/quality.py sn_dcgan --data_root DIR --minutes 8 15 30 --chain   # 30 minutes in all

Each run appends one record to results/quality.jsonl
(gan_gaussian: results/gaussian.jsonl) with its flags, commit, date and machine, its metrics, the
in-training FID trajectory (with --flags=--quality) and its last sample grid, copied to
docs/images/runs/; `python benchmarks/report.py` renders the README's and docs' tables from those
records. It also prints one JSON line per run and a Markdown table at the end. Time your runs
alone: two trainings on the same cores halve each other's speed.
"""

import argparse
import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]


def train_for(script, minutes, data_root, out, extra, resume=False):
    """Run the script until `minutes` have passed, then SIGINT (it saves its checkpoint and exits);
    `resume`: go on from OUT's checkpoint."""
    cmd = [sys.executable, str(ROOT / f"{script}.py"), "--data_root", data_root, "--out", str(out)]
    cmd += ["--epochs", "100000", "--no-quality", *extra, *(["--resume", "auto"] if resume else [])]
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


def log_rows(out):
    import csv

    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def trajectory(rows):
    """[[minutes, generator steps, in-training FID], ...] from the log rows that carry a `fid`."""
    return [
        [round(float(r["elapsed_s"]) / 60, 2), int(float(r["step"])), round(float(r["fid"]), 1)]
        for r in rows
        if r.get("fid")
    ]


def data_label(data_root, flags=""):
    """'MNIST, 4,000 training digits': the count read from the IDX header of the training images;
    'MNIST, 400 of 4,000 training digits' where the flags hold --train_images 400."""
    words = shlex.split(flags.replace("--train_images=", "--train_images "))
    part = words[words.index("--train_images") + 1] if "--train_images" in words[:-1] else None
    raw = Path(data_root) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    try:
        if raw.is_file():
            head = raw.open("rb").read(8)
        else:
            import gzip

            head = gzip.open(raw.with_suffix(".gz")).read(8)
        whole = int.from_bytes(head[4:8], "big")
        return f"MNIST, {f'{int(part):,} of ' if part else ''}{whole:,} training digits"
    except OSError:
        return f"MNIST from {data_root}"


def data_sums(data_root):
    """{file: SHA-256} of the MNIST IDX files a run read, so a record names its exact data
    (benchmarks/mnist_subset.py builds the 4,000-digit subset whose sums it checks)."""
    import hashlib

    raw = Path(data_root) / "MNIST" / "raw"
    names = [f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    return {n: hashlib.sha256((raw / n).read_bytes()).hexdigest() for n in names if (raw / n).is_file()}


METRICS = ("fid", "kid", "precision", "recall", "fid_held_out", "copy_share")


def run_real(args):
    """The floor of the models table: the data set's real held-out digits, measured as a model's
    samples are (the same --n images against the same training images)."""
    sys.path.insert(0, str(ROOT))
    import evaluate

    folder = Path(tempfile.mkdtemp(prefix="real_held_out_"))
    held = evaluate.held_out_split("mnist", args.data_root)
    if held is None:
        raise SystemExit(f"{args.data_root} has no MNIST test split")
    import common

    images = held[0][evaluate.subset(len(held[0]), args.n, 0)]
    common.save_pngs(images.float().div(127.5).sub(1), folder)
    cmd = [sys.executable, str(ROOT / "evaluate.py"), str(folder), "--data_root", args.data_root]
    result = subprocess.run([*cmd, "--n", str(args.n), "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"evaluate.py failed:\n{result.stderr[-3000:]}")
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    # the held-out images against themselves: fid_held_out 0 and copy_share 0.5 say nothing
    row = records.new_record(
        "quality", args.device, script="real", flags="", data=data_label(args.data_root),
        data_sha256=data_sums(args.data_root), n=len(images),
        metrics={k: metrics[k] for k in ("fid", "kid", "precision", "recall") if k in metrics},
        note="real held-out digits (the test split) measured as samples are: the floor of the table",
    )  # fmt: skip
    if args.record:
        records.append(row, args.results)
    print(json.dumps(row), flush=True)
    return [row]


def keep_image(image, grids, name):
    """Copy a run's image to GRIDS/NAME (a path from the repository root when it lies inside it). A
    name an earlier run of the same script, flags and day holds gets a number (NAME_2.png, ...): a
    record's image is never replaced by another run's."""
    grids = Path(grids)
    grids.mkdir(parents=True, exist_ok=True)
    target, n = grids / name, 1
    while target.exists():
        n += 1
        target = grids / f"{Path(name).stem}_{n}{Path(name).suffix}"
    shutil.copyfile(image, target)
    path = target.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def slug(flags):
    return re.sub(r"[^A-Za-z0-9.]+", "_", flags).strip("_")


def run_gaussian(args, extra):
    """gan_gaussian runs whole (seconds): its end figures are the mean and std of what G generates."""
    out = Path(args.out or tempfile.mkdtemp(prefix="quality_")) / "gan_gaussian"
    cmd = [sys.executable, str(ROOT / "gan_gaussian.py"), "--out", str(out), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gan_gaussian failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    found = re.search(r"generated: mean \[([^]]*)\], std \[([^]]*)\]", result.stdout)
    mean, std = ([float(v) for v in g.split(",")] for g in found.groups())
    last = log_rows(out)[-1]
    metrics = dict(mean=mean[0] if len(mean) == 1 else mean, std=std[0] if len(std) == 1 else std)
    metrics.update(last_batch_mean=float(last["gen_mean"]), last_batch_std=float(last["gen_std"]))
    record = records.new_record(
        "gaussian", args.device, script="gan_gaussian", flags=args.flags.strip(), steps=int(last["step"]),
        images_per_s=round(float(last["images_per_s"])), wall_s=round(float(last["elapsed_s"]), 1),
        metrics=metrics, data="N(3, 1) samples drawn by the script",
    )  # fmt: skip
    if args.record:
        name = f"gan_gaussian_{record['date']}{'_' + slug(args.flags) if args.flags.strip() else ''}.png"
        record["grid"] = keep_image(out / "distribution.png", args.grids, name)
        records.append(record, args.results)
    print(json.dumps(record), flush=True)
    return [record]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", choices=[*SCRIPTS, "all", "gan_gaussian", "real"])
    parser.add_argument("--data_root", default=None, help="MNIST folder (torchvision layout); image scripts")
    parser.add_argument("--minutes", type=float, nargs="+", default=[8.0], help="budgets (default 8)")
    parser.add_argument("--n", type=int, default=1000, help="samples to measure (default 1000)")
    parser.add_argument("--device", default="cpu", help="training and evaluation device (default cpu)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--chain", action="store_true", help="the budgets: marks of one run, resumed at each")
    parser.add_argument("--flags", default="", help='flags for the script, one string: "--amp --batch 64"')
    parser.add_argument("--note", default=None, help="one line for the record: why this run was made")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append a record to RESULTS/*.jsonl, keep the grid in GRIDS (on)")  # fmt: skip
    parser.add_argument("--results", default=None, help="records folder (default results/; $GAN_RESULTS_DIR)")
    parser.add_argument("--grids", default=str(ROOT / "docs" / "images" / "runs"),
                        help="where the runs' last grids are kept (default docs/images/runs/)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.script == "gan_gaussian":
        return run_gaussian(args, ["--device", args.device, *shlex.split(args.flags)])
    if args.data_root is None:
        parser.error("--data_root is required for the image scripts")
    if args.script == "real":
        return run_real(args)
    scripts = SCRIPTS if args.script == "all" else [args.script]
    keep = Path(args.out or tempfile.mkdtemp(prefix="quality_"))
    # "--quality" only adds the in-training figure: the run's flags are otherwise the defaults
    flags = " ".join(f for f in shlex.split(args.flags) if f != "--quality")
    rows = []
    for script in scripts:
        wall, done = 0.0, 0.0
        for minutes in sorted(set(args.minutes)) if args.chain else args.minutes:
            # a folder of its own, emptied: a grid left by an earlier run with other flags is not
            # this run's (with --chain one folder for all marks, emptied before the first)
            budget = max(args.minutes) if args.chain else minutes
            out = keep / f"{script}_{'chain' * args.chain}{budget:g}min{'_' + slug(flags) if flags else ''}"
            if not done:
                shutil.rmtree(out, ignore_errors=True)
            extra = ["--device", args.device, *shlex.split(args.flags)]
            wall = wall * args.chain + train_for(script, minutes - done, args.data_root, out, extra, done > 0)
            done = minutes if args.chain else 0.0
            log = [r for r in log_rows(out) if r.get("images_per_s")][-1]
            metrics = measure(out / "checkpoint.pt", args.data_root, args.n, args.device)
            row = records.new_record(
                "quality", args.device, script=script, flags=flags, data=data_label(args.data_root, flags),
                data_sha256=data_sums(args.data_root), budget_min=minutes, wall_s=round(wall, 1),
                steps=int(float(log["step"])), images_per_s=round(float(log["images_per_s"])), n=args.n,
                metrics={k: metrics[k] for k in METRICS if k in metrics},
                trajectory=trajectory(log_rows(out)),
            )  # fmt: skip
            if args.chain:
                row["chain"] = sorted(set(args.minutes))
            if args.note:
                row["note"] = args.note
            if args.record:
                # the newest written (a chained run's earlier stop may have left a later-sorting step_ grid)
                grid = max((out / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime)
                chain = "_chain" if args.chain else ""
                name = f"{script}_{minutes:g}min{chain}_{row['date']}{'_' + slug(flags) if flags else ''}.png"
                row["grid"] = keep_image(grid, args.grids, name)
                records.append(row, args.results)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| script | minutes | FID | held-out FID | copy share | precision | recall | G steps | flags |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m = {"fid_held_out": math.nan, "copy_share": math.nan, **r["metrics"]}
        print(
            f"| {r['script']} | {r['budget_min']:g} | {m['fid']:.1f} | {m['fid_held_out']:.1f} | "
            f"{m['copy_share']:.2f} | {m['precision']:.2f} | {m['recall']:.2f} | {r['steps']} | "
            f"{r['flags']} |"
        )
    print(f"\nmachine: {records.machine_label(rows[0]['machine'])}; runs kept in {keep}")
    return rows


if __name__ == "__main__":
    main()
