"""One command that checks every GPU path of the collection on a machine that has a GPU:

    python benchmarks/gpu_check.py --device cuda              # about 5-8 minutes on one GPU

For every image script: a short run with its defaults (bfloat16 autocast where the GPU has it
natively), the same with --compile, --resume of the first run for as many steps again, and
--generate from its checkpoint; then evaluate.py on a dcgan checkpoint on the GPU,
benchmarks/throughput.py on the GPU, and, when more than one GPU is visible, dcgan and wgan_gp under
torchrun on all of them. gan_gaussian runs a short default run too (it trains on the CPU unless told).
It prints one table (script, variant, images/s, ms per generator step, passed or the first error
line) and appends it to results/gpu_check.jsonl as one record, which benchmarks/report.py renders in
docs/speed.md. The exit code is 1 when any row failed; 2, with no table and no record, when
--device names CUDA on a machine without it. No network: the data are synthetic MNIST-format
files in a temporary folder (--data_root DIR for real ones).

    python benchmarks/gpu_check.py --device cpu --results /tmp/r     # the same path, tiny, on a CPU

On the CPU every network is tiny (--hidden_dim 8, batch 8, 3 steps) and there is no --compile row
(a first compile on two cores takes 20-40 s and says nothing of the GPU; tests/test_speed_options.py
compiles a script on the CPU); the test suite runs it this way. images/s is
the run's last log row; ms per step is elapsed seconds (log.csv, without start-up) over its steps.
"""

import argparse
import contextlib
import csv
import importlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
import throughput  # noqa: E402

SCRIPTS = ["gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]


def first_error(text):
    """The line a reader needs: the last line that names an error, else the last line."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    named = [ln for ln in lines if "Error" in ln or "error" in ln or ln.startswith(("stop", "--"))]
    return (named or lines or ["failed without a message"])[-1][:160]


def run_main(module_name, argv):
    """Run a script's main(argv) in this process; returns (passed, the first error line or "")."""
    module = importlib.import_module(module_name)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            module.main(argv)
    except SystemExit as e:  # common.fail and argparse stop with a message
        if e.code not in (0, None):
            return False, first_error(f"{out.getvalue()}\n{e.code}")
    except Exception as e:  # noqa: BLE001 - a row reports any failure and the check goes on
        return False, first_error(f"{type(e).__name__}: {e}")
    return True, ""


def speed(out):
    """(images/s, ms per generator step) from a run's log.csv, or ("", "") when it has none."""
    try:
        with open(Path(out) / "log.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("images_per_s")]
        last = rows[-1]
        return round(float(last["images_per_s"])), round(
            1000 * float(last["elapsed_s"]) / float(last["step"]), 1
        )
    except (OSError, IndexError, KeyError, ValueError, ZeroDivisionError):
        return "", ""


def row(script, variant, passed=True, error="", images_per_s="", ms_per_step="", seconds=""):
    """One line of the table: passed, or the first error line."""
    return dict(script=script, variant=variant, images_per_s=images_per_s, ms_per_step=ms_per_step,
                seconds=seconds, result="passed" if passed else error)  # fmt: skip


def image_script_rows(script, opts, data, tmp, extra):
    out = tmp / script
    steps = str(opts.steps)
    base = ["--data_root", str(data), "--device", opts.device, "--no-quality", "--log_every", "1", *extra]
    base += ["--classes", "0,1"] if script == "dcgan_classwise" else []
    variants = [("defaults", [*base, "--max_steps", steps, "--out", str(out)], out)]
    if opts.device != "cpu":
        variants.append(
            ("--compile", [*base, "--compile", "--max_steps", steps, "--out", f"{out}_c"], f"{out}_c")
        )
    ckpt = str(out / "checkpoint.pt")
    resume = ["--device", opts.device, "--resume", ckpt]
    variants.append(("--resume", [*resume, "--max_steps", str(2 * opts.steps)], out))
    variants.append(("--generate", [*resume, "--generate", "16"], None))
    expected = 16 * (2 if script == "dcgan_classwise" else 1)  # classwise: 16 per class, 2 classes
    rows = []
    for variant, argv, folder in variants:
        start = time.perf_counter()
        passed, error = run_main(script, argv)
        ips, ms = speed(folder) if folder and passed else ("", "")
        if variant == "--generate" and passed and len(list(out.glob("**/generated/*.png"))) != expected:
            passed, error = False, f"--generate did not write {expected} PNG files"
        rows.append(row(script, variant, passed, error, ips, ms, round(time.perf_counter() - start, 1)))
    return rows


def subprocess_row(script, variant, cmd, timeout):
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        passed, error = done.returncode == 0, first_error(done.stderr or done.stdout)
    except subprocess.TimeoutExpired:
        passed, error = False, f"timed out after {timeout} s"
    return row(script, variant, passed, error, seconds=round(time.perf_counter() - start, 1))


def check(opts, tmp):
    import torch

    if opts.data_root:
        data = Path(opts.data_root)
    else:
        data = tmp / "mnist"
        throughput.write_synthetic_mnist(data, n=256 if opts.device == "cpu" else 10_000)
    tiny = ["--hidden_dim", "8", "--batch", "8"] if opts.device == "cpu" else []
    rows = []
    g_out = tmp / "gan_gaussian"
    passed, error = run_main("gan_gaussian", ["--device", opts.device, "--steps", "200", "--out", str(g_out)])
    rows.append(row("gan_gaussian", "defaults, 200 steps", passed, error, *(speed(g_out) if passed else ())))
    for script in opts.scripts:
        rows += image_script_rows(script, opts, data, tmp, tiny)
    ckpt = tmp / "dcgan" / "checkpoint.pt"
    passed, error = run_main(
        "evaluate", [str(ckpt), "--device", opts.device, "--n", "64", "--data_root", str(data)]
    )
    rows.append(row("evaluate.py", "dcgan checkpoint", passed, error))
    bench = [sys.executable, str(Path(__file__).parent / "throughput.py"), "--device", opts.device]
    bench += "--no-record --scripts dcgan,wgan_gp --warmup 2 --steps 5 --repeats 1".split()
    bench += ["--data_root", str(data)]
    bench += "--batch 8 --hidden_dim 8 --no-options".split() if opts.device == "cpu" else []
    rows.append(subprocess_row("throughput.py", "dcgan, wgan_gp", bench, opts.timeout))
    gpus = torch.cuda.device_count() if opts.device.startswith("cuda") else 0
    for script in ("dcgan", "wgan_gp") if gpus > 1 else ():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
        cmd += [str(Path(__file__).resolve().parents[1] / f"{script}.py"), "--data_root", str(data)]
        cmd += [
            "--device",
            "cuda",
            "--no-quality",
            "--max_steps",
            str(opts.steps),
            "--out",
            str(tmp / f"{script}_torchrun"),
        ]
        rows.append(subprocess_row(script, f"torchrun, {gpus} GPUs", cmd, opts.timeout))
    return rows


def table(rows):
    head = ["script", "variant", "images/s", "ms per G step", "seconds", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["script"], r["variant"], r["images_per_s"], r["ms_per_step"], r["seconds"], r["result"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu (default cuda)")
    parser.add_argument(
        "--data_root", default=None, help="MNIST IDX files (default: synthetic, in a temp folder)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="generator steps per run (default 50; cpu: 3)"
    )
    parser.add_argument(
        "--scripts", default=",".join(SCRIPTS), help="comma-separated image scripts (default all)"
    )
    parser.add_argument(
        "--timeout", type=int, default=300, help="seconds for each subprocess row (default 300)"
    )
    parser.add_argument("--results", default=None, help="records folder (default results/; $GAN_RESULTS_DIR)")
    opts = parser.parse_args(argv)
    opts.scripts = [s.strip() for s in opts.scripts.split(",") if s.strip()]
    if opts.steps is None:
        opts.steps = 3 if opts.device == "cpu" else 50
    import torch

    if opts.device.startswith("cuda") and not torch.cuda.is_available():  # no table, no record
        print(f"gpu_check: --device {opts.device}: CUDA is not available on this machine (--device cpu "
              "runs the same path at a tiny size)", file=sys.stderr)  # fmt: skip
        return 2
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        os.chdir(tmp)  # the runs' relative outputs land in tmp (contextlib.chdir is Python 3.11+)
        try:
            rows = check(opts, Path(tmp))
        finally:
            os.chdir(here)
    print(table(rows))
    record = records.new_record("gpu_check", opts.device, script="all", steps=opts.steps, rows=rows)
    print(f"\nrecord appended to {records.append(record, opts.results)}")
    return 0 if all(r["result"] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
