"""Results records: one JSON object per measured run, appended to results/<kind>.jsonl and committed.

Every figure in README.md's results table and in docs/ under "Results" is rendered from these records
by benchmarks/report.py, never typed by hand. A record says what ran (script, flags, commit), where
(the machine) and when (the date), so a figure can always be traced to its run.

Fields (all but kind, date and machine may be missing from an old record):
    kind        "quality", "public", "throughput", "gaussian", "gpu_check", "sampling", ...
    script      our script name, or the public script's label ("PyTorch-GAN wgan_gp.py")
    flags       the flags as one string, as passed on the command line ("" for the defaults); when a
                script's default changes, its older records spell out what they ran ("--augment none")
    defaults_then  true on such a record that ran with no flags: the front page may still show it,
                naming its flags
    lever, kept, why, baseline_flags   a change tried against the defaults run of its day (levers.md)
    command     the whole command line that made the record
    commit      git commit of this repository when it ran (short hash, "+dirty" when uncommitted)
    date        YYYY-MM-DD
    machine     {"cpu", "cores", "torch", "device", "bf16_native"}: the label, see machine_label()
    data        what it trained on ("MNIST subset, 4,000 digits")
    budget_min  wall-clock minutes of training (quality, public)
    steps, images_per_s, metrics {"fid", "kid", "precision", "recall", ...}
    trajectory  [[minutes, generator steps, in-training FID], ...]
    grid        path (from the repository root) of the run's last sample grid, under docs/images/
    note        one line a reader needs ("the paper's lr 5e-5", "not kept: flat after 8 minutes")
    chain       quality.py --chain: the marks of the one run this record is a mark of ([8, 15, 30])
"""

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def cpu_name():
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    return name


def machine_info(device="cpu"):
    """The machine a record was measured on: CPU model, cores, torch, device, native bfloat16."""
    import torch

    info = dict(cpu=cpu_name(), cores=os.cpu_count(), torch=torch.__version__.split("+")[0])
    info["device"] = str(device)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_count"] = torch.cuda.device_count()
        info["bf16_native"] = torch.cuda.get_device_capability(index) >= (8, 0)
    else:
        with contextlib.suppress(OSError):
            flags = Path("/proc/cpuinfo").read_text()
            info["bf16_native"] = "avx512_bf16" in flags or "amx_bf16" in flags
    return info


def machine_label(machine):
    """'AMD EPYC 9B14, 2 cores' or 'NVIDIA H100, torch 2.14.1': what a table prints per row."""
    if machine.get("gpu"):
        return f"{machine['gpu']}"
    cpu = machine.get("cpu", "?")
    for mark in ("(R)", "(TM)", " Processor", " CPU"):  # "Intel(R) Xeon(R) Processor": "Intel Xeon"
        cpu = cpu.replace(mark, "")
    return f"{cpu.strip()}, {machine.get('cores', '?')} cores"


def git_commit():
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        # records appended and pages rendered by earlier runs are not code: they leave a run clean
        dirty = run(
            "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results", ":!docs"
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def today():
    return datetime.date.today().isoformat()


def new_record(kind, device="cpu", **fields):
    """A record with the run's provenance filled in: commit, date, machine, command."""
    record = dict(kind=kind, date=today(), commit=git_commit(), machine=machine_info(device))
    record["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    record.update(fields)
    return record


def append(record, results=None):
    """Append one record to RESULTS/<kind>.jsonl: `results`, else $GAN_RESULTS_DIR, else results/."""
    folder = Path(results or os.environ.get("GAN_RESULTS_DIR") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{record['kind']}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return folder / f"{record['kind']}.jsonl"


def load(results=None):
    """Every record in results/*.jsonl, in file order (oldest first within a file)."""
    folder = Path(results or RESULTS)
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{number}: not a JSON record ({e})") from None
    return records
