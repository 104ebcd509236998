"""Throughput of every image script: its fast data path against the usual DataLoader baseline.

For each script the benchmark runs the script's own main() in-process and times --steps generator
updates after --warmup ones, in two variants built from the same networks and the same step:

  fast      the script as it is: one uint8 tensor on the device, batches by index, losses summed
            on the device and read every --log_every steps (common.TensorBatches, common.RunLog);
  baseline  what most public implementations do: torchvision.datasets.MNIST with Resize, ToTensor
            and Normalize((0.5,), (0.5,)) through a DataLoader(shuffle=True), and a .item() on each
            loss every step (one host sync per step).

The baseline is made without editing the scripts: common.make_batches (and common.TensorBatches,
which dcgan_classwise builds itself) return a DataLoader-fed object of the same interface, and
common.RunLog.add calls .item() on each loss; everything is restored afterwards. The timed window
runs from the end of generator step --warmup to the end of step --warmup + --steps (one device sync
at each end); start-up, data decoding, epoch-end sample grids and checkpoints, and the final plots
are outside it. Variants run interleaved --repeats times; the table gives medians. --amp and
--compile rows appear for the scripts whose parser has those flags ("n/a" otherwise).
--profile adds the share of each step spent fetching batches, for both data paths (timed around
the data path's generator inside the real run; a CPU figure: on a GPU the fetch is asynchronous).

--nproc N runs the same measurement under torchrun in N processes (DistributedDataParallel, gloo on
the CPU, one GPU each on CUDA): images/s counts every process's images (N x --batch per step), and
only the fast rows are made (the DataLoader baseline does not share its data out). torchrun gives
each process one CPU thread (OMP_NUM_THREADS=1) where one process alone uses every core.

    python benchmarks/throughput.py                                   # synthetic MNIST, CPU
    python benchmarks/throughput.py --data_root ../shared/data/mnist-subset --profile --csv out.csv
    python benchmarks/throughput.py --scripts dcgan --nproc 2                 # 2 processes

Each run appends one record to results/throughput.jsonl (its rows, flags, commit, date and machine;
--no-record skips it) that benchmarks/report.py renders into docs/speed.md.
"""

import argparse
import contextlib
import csv
import importlib
import io
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

import common  # noqa: E402

SCRIPTS = ("gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan")
OPTIONS = (("--amp",), ("--compile",), ("--amp", "--compile"))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_synthetic_mnist(root, n=10_000, seed=0):
    """MNIST IDX files (what torchvision.datasets.MNIST reads): class c is a bar on row 2 + 2c."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images", images), ("train-labels", labels)):
        for prefix, part in (("train", array), ("t10k", array[:100])):
            path = raw / f"{name.replace('train', prefix)}-idx{array.ndim}-ubyte"
            with open(path, "wb") as f:
                f.write(struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *part.shape))
                f.write(part.tobytes())


class LoaderBatches:
    """The baseline data path with the interface of common.TensorBatches (batches, len, batch, channels)."""

    def __init__(self, data_root, image_size, batch, device, workers, classes=None):
        from torchvision import datasets, transforms

        tf = transforms.Compose(
            [transforms.Resize(image_size), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]
        )
        self.dataset = datasets.MNIST(data_root, train=True, download=False, transform=tf)
        if classes is not None:
            keep = torch.isin(self.dataset.targets, torch.as_tensor(list(classes))).nonzero().view(-1)
            self.dataset = torch.utils.data.Subset(self.dataset, keep.tolist())
        self.images = self.dataset  # dcgan_classwise prints len(data.images)
        self.batch, self.channels, self.device = min(batch, len(self.dataset)), 1, device
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch, shuffle=True, num_workers=workers, drop_last=True
        )

    def __len__(self):
        return len(self.dataset) // self.batch

    def batches(self, epoch, start=0):
        for i, (x, _) in enumerate(self.loader):
            if i >= start:
                yield x.to(self.device)


def patch(obj, name, value, saved):
    saved.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


@contextlib.contextmanager
def instrumented(module, device, warmup, steps, baseline, data_root, workers, profile):
    """Time steps warmup..warmup+steps through RunLog.add; with `baseline`, swap in the DataLoader path."""
    t = {"adds": 0, "start": None, "end": None, "images": 0, "excluded": 0.0, "data": 0.0}
    saved = []
    add = common.RunLog.add

    def timed_add(self, images, step=None, **losses):
        if baseline:
            for v in losses.values():
                float(v.item())  # the per-step host sync of the usual logging code
        t["adds"] += 1
        if t["adds"] in (warmup, warmup + steps):
            sync(device)
            t["start" if t["adds"] == warmup else "end"] = time.perf_counter()
        if warmup < t["adds"] <= warmup + steps:
            t["images"] += images
        return add(self, images, step, **losses)

    def inside():
        return t["start"] is not None and t["end"] is None

    def excluded(fn):  # epoch-end work (sample grids, checkpoints): same in both variants, not a step
        def run(*args, **kwargs):
            if not inside():
                return fn(*args, **kwargs)
            sync(device)
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            sync(device)
            t["excluded"] += time.perf_counter() - t0
            return result

        return run

    def timed_batches(fn):
        def batches(self, epoch, start=0):
            it = fn(self, epoch, start)
            while True:
                t0 = time.perf_counter()
                x = next(it, None)
                if inside():
                    t["data"] += time.perf_counter() - t0
                if x is None:
                    return
                yield x

        return batches

    try:
        patch(common.RunLog, "add", timed_add, saved)
        for name in ("save_grid", "save_checkpoint", "save_gif", "plot_losses"):
            patch(common, name, excluded(getattr(common, name)), saved)
        patch(common.Run, "save", excluded(common.Run.save), saved)  # its finite check syncs the device
        if hasattr(module, "sample"):
            patch(module, "sample", excluded(module.sample), saved)
        if baseline:
            pending = []  # dcgan_classwise builds one TensorBatches per class, in --classes order

            def make_batches(args, device, classes=None):
                return LoaderBatches(data_root, args.image_size, args.batch, device, workers, classes)

            def tensor_batches(images, batch, device, seed=0):
                size = images.shape[-1]
                return LoaderBatches(data_root, size, batch, device, workers, [pending.pop(0)])

            patch(common, "make_batches", make_batches, saved)
            patch(common, "TensorBatches", tensor_batches, saved)
            t["pending"] = pending
        data_class = LoaderBatches if baseline else common.TensorBatches
        if profile:
            patch(data_class, "batches", timed_batches(data_class.batches), saved)
        yield t
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def script_flags(module):
    """The speed options this script's parser knows (--amp, --compile)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        module.main(["--help"])
    return {flag for flag in ("--amp", "--compile") if flag in text.getvalue()}


def run_once(name, module, opts, flags, extra, baseline, tmp):
    """One in-process training run; returns (images/s, ms per G step, data share or None)."""
    argv = ["--data_root", opts.data_root, "--device", opts.device, "--seed", "0", *flags, *extra]
    argv += ["--max_steps", str(opts.warmup + opts.steps), "--out", str(tmp / f"{name}_{time.time_ns()}")]
    args = module.build_parser().parse_args(argv)
    device = common.pick_device(opts.device)
    with instrumented(
        module, device, opts.warmup, opts.steps, baseline, opts.data_root, opts.workers, opts.profile
    ) as t:
        if baseline and name == "dcgan_classwise":
            t["pending"].extend(args.classes)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main(argv)
    if t["end"] is None:
        raise RuntimeError(f"{name} stopped before {opts.warmup + opts.steps} generator steps")
    seconds = t["end"] - t["start"] - t["excluded"]
    data = 100 * t["data"] / seconds if opts.profile else None
    return t["images"] / seconds, 1000 * seconds / opts.steps, data


def script_args(name, opts):
    extra = ["--classes", "0"] if name == "dcgan_classwise" else []
    extra += ["--no-quality"]  # the epoch-end quality figure is not a training step
    for flag in ("batch", "hidden_dim", "log_every"):
        if getattr(opts, flag) is not None:
            extra += [f"--{flag}", str(getattr(opts, flag))]
    return extra


def benchmark(opts, tmp):
    rows = []
    for name in opts.scripts:
        module = importlib.import_module(name)
        extra = script_args(name, opts)
        known = script_flags(module)
        fp32 = ("--no-amp",) if "--amp" in known else ()  # --amp is on by default where bf16 is native
        variants = [("fast", fp32, False), ("DataLoader + .item()", fp32, True)]
        if opts.processes > 1:
            variants = variants[:1]
        if opts.options:
            options = [o if "--amp" in o else (*fp32, *o) for o in OPTIONS if set(o) <= known]
            variants += [("fast " + " ".join(o), o, False) for o in options]
        results = {v[0]: [] for v in variants}
        for _ in range(opts.repeats):  # interleaved, so a noisy neighbour hits every variant alike
            for label, flags, baseline in variants:
                if isinstance(results[label], str):
                    continue
                try:
                    results[label].append(run_once(name, module, opts, flags, extra, baseline, tmp))
                except Exception as e:  # e.g. --compile without a compiler: a row that says so
                    results[label] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    print(f"{name} {label}: {results[label]}", file=sys.stderr)
        args = module.build_parser().parse_args(["--data_root", opts.data_root, *extra])
        size = args.image_size or 32
        base = results.get("DataLoader + .item()", "")
        base = None if isinstance(base, str) else statistics.median(r[0] for r in base)
        for label, flags, baseline in variants:
            row = {"script": name, "image_size": size, "batch": args.batch, "variant": label}
            row["variant"] += f", {opts.processes} processes" if opts.processes > 1 else ""
            if isinstance(results[label], str):
                rows.append({**row, "images_per_s": "", "ms_per_g_step": "", "ratio": results[label]})
                continue
            ips = statistics.median(r[0] for r in results[label])  # Run counts every process's images
            row.update(images_per_s=ips, ms_per_g_step=statistics.median(r[1] for r in results[label]))
            row.update(ratio=ips / base if base else "", runs=len(results[label]))
            data = [r[2] for r in results[label] if r[2] is not None]
            row["data_pct"] = statistics.median(data) if data else ""
            rows.append(row)
        for o in OPTIONS:
            if opts.options and not set(o) <= known:
                rows.append({"script": name, "image_size": size, "batch": args.batch})
                rows[-1].update(variant="fast " + " ".join(o), images_per_s="n/a", ratio="n/a")
    return rows


def fmt(value, spec):
    return format(value, spec) if isinstance(value, float) else str(value if value is not None else "")


def table(rows, profile):
    head = ["script", "image size", "batch", "variant", "images/s", "ms per G step", "vs baseline"]
    head += ["data path % of step"] if profile else []
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["script"], f"{r['image_size']} px", r["batch"], r["variant"]]
        cells += [fmt(r["images_per_s"], ",.0f"), fmt(r.get("ms_per_g_step"), ".1f")]
        ratio = r["ratio"]
        cells += [f"{ratio:.2f}x" if isinstance(ratio, float) else ratio]
        cells += [fmt(r.get("data_pct"), ".1f")] if profile else []
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def machine(device_name):
    device = common.pick_device(device_name)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    return (
        f"torch {torch.__version__}, device {device} ({name}), os.cpu_count() {os.cpu_count()}, "
        f"torch threads {torch.get_num_threads()}"
    )


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    p = parser.add_argument
    p("--scripts", default=",".join(SCRIPTS), help=f"comma-separated (default {','.join(SCRIPTS)})")
    p("--device", default="cpu", help="cpu, cuda, cuda:1, mps, auto (default cpu)")
    p("--data_root", default=None, help="MNIST IDX files (default: a synthetic set in a temp folder)")
    p("--warmup", type=common.positive_int, default=3, help="generator steps before timing (default 3)")
    p("--steps", type=common.positive_int, default=10, help="timed generator steps (default 10)")
    p("--repeats", type=common.positive_int, default=3, help="interleaved runs per variant (default 3)")
    p("--workers", type=common.nonnegative_int, default=0, help="baseline DataLoader workers (default 0)")
    p("--batch", type=common.positive_int, default=None, help="batch size (default: each script's)")
    p("--hidden_dim", type=common.positive_int, default=None, help="base width (default: each script's)")
    p("--log_every", type=common.positive_int, default=None, help="log period (default: each script's)")
    p("--options", action=argparse.BooleanOptionalAction, default=True, help="--amp/--compile rows (on)")
    p("--profile", action="store_true", help="also the share of each step spent fetching batches")
    p("--csv", default=None, help="also write the rows to this CSV file")
    p("--nproc", type=common.positive_int, default=1, help="processes under torchrun (default 1)")
    p("--record", action=argparse.BooleanOptionalAction, default=True, help="append a results record (on)")
    p("--results", default=None, help="records folder (default results/, or $GAN_RESULTS_DIR)")
    return parser


def main(argv=None):
    opts = build_parser().parse_args(argv)
    opts.scripts = [s.strip().removesuffix(".py") for s in opts.scripts.split(",") if s.strip()]
    unknown = set(opts.scripts) - set(SCRIPTS)
    if unknown:
        common.fail(f"--scripts: {', '.join(sorted(unknown))} not among {', '.join(SCRIPTS)}")
    opts.processes = int(os.environ.get("WORLD_SIZE", "1"))
    if opts.nproc > 1 and opts.processes == 1:  # this same measurement in N processes under torchrun
        launch = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={opts.nproc}",
        ]
        given = list(sys.argv[1:] if argv is None else argv)
        if "--nproc" in given:  # the processes learn their number from torchrun, and torchrun's own
            del given[given.index("--nproc") : given.index("--nproc") + 2]  # parser would take --nproc
        given = [a for a in given if not a.startswith("--nproc=")]
        raise SystemExit(subprocess.run([*launch, __file__, *given]).returncode)
    quiet = int(os.environ.get("RANK", "0")) > 0  # under torchrun rank 0 reports
    if opts.processes > 1:  # one process group for all the runs (leaving and rejoining one can hang)
        common.start_processes(common.pick_device(opts.device))
    source = opts.data_root or "synthetic MNIST-format data (10,000 images)"
    with tempfile.TemporaryDirectory(prefix="throughput_") as tmp:
        if opts.data_root is None:
            opts.data_root = os.path.join(tmp, "mnist")
            write_synthetic_mnist(opts.data_root)
        rows = benchmark(opts, Path(tmp))
    if quiet:
        return rows
    processes = f", {opts.processes} processes (torchrun)" if opts.processes > 1 else ""
    print(f"\n{machine(opts.device)}{processes}; data: {source}")
    print(
        f"timed {opts.steps} generator steps after {opts.warmup}, median of {opts.repeats} interleaved runs\n"
    )
    print(table(rows, opts.profile))
    if opts.record:  # one record per row, as report.py renders docs/speed.md
        for r in rows:
            record = records.new_record("throughput", opts.device, processes=opts.processes, data=source)
            record.update({k: r[k] for k in ("script", "variant", "batch", "image_size") if k in r})
            for k, v in (("images_per_s", r.get("images_per_s")), ("ms_per_step", r.get("ms_per_g_step"))):
                if isinstance(v, float):
                    record[k] = round(v, 1)
            ratio = r.get("ratio")
            record["ratio"] = round(ratio, 3) if isinstance(ratio, float) else ratio or None
            record.update(steps=opts.steps, repeats=opts.repeats, data_path_pct=r.get("data_pct") or None)
            path = records.append(record, opts.results)
        print(f"{len(rows)} records appended to {path}")
    if opts.profile:
        for r in rows:
            if r["variant"] == "fast" and r["script"] in ("gan_mnist", "dcgan"):
                verdict = "under" if r["data_pct"] < 5 else "NOT under"
                print(f"\n{r['script']}: the data path takes {r['data_pct']:.1f}% of a step ({verdict} 5%)")
    if opts.csv:
        fields = ["script", "image_size", "batch", "variant", "images_per_s", "ms_per_g_step", "ratio"]
        with open(opts.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields + ["data_pct", "runs"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
