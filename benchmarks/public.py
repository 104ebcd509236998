"""A public GAN script measured with our protocol: train for M wall minutes, stop it as Ctrl-C would,
write N samples and score them with evaluate.py (classifier FID, KID, precision, recall).

    python benchmarks/public.py /tmp/public/PyTorch-GAN/implementations/wgan_gp/wgan_gp.py \\
        --data_root ../shared/data/mnist-subset --minutes 8 --seed 0 --n 1000 --out /tmp/pub_wgan_gp
    python benchmarks/public.py /tmp/public/examples/dcgan/main.py --data_root DIR --minutes 8 \\
        --out /tmp/pub_examples_dcgan -- --batchSize 64      # after --: more flags for the script

Two families are known: eriklindernoren/PyTorch-GAN (implementations/*/*.py, MNIST at the hard-coded
"../../data/mnist") and pytorch/examples' dcgan/main.py (run with --dataset mnist --dataroot DIR).

What is changed, and nothing else (the script's source is never edited, every other flag is its default):
- its data path: a scratch folder, OUT/work, where the script's path resolves to --data_root's MNIST
  files (symlinks in DATA/MNIST/raw, the unpacked IDX files that torchvision's MNIST checks for, so
  its download=True finds them and never goes to the network); the script runs with that as its
  working directory, so its own outputs (sample grids, examples' per-epoch .pth files) land there;
- its seed: random, numpy and torch are seeded with --seed before the script runs (and examples'
  --manualSeed is set to it, or the script would draw one);
- its stopping time: its epoch count is made unreachable (--n_epochs / --niter 1000000, as
  benchmarks/quality.py passes --epochs 100000 to ours) and it is stopped after --minutes of wall
  time, counted from the start of the process as quality.py does. The stop is our scripts' Ctrl-C:
  SIGINT asks for it, and it happens right after the generator's next optimizer step (a second
  SIGINT, or one before any generator step, stops at once).

How it runs: a child process (this file with --_child) seeds, sets sys.argv, and runs the script's
module-level code with runpy.run_path as __main__, on the CPU (CUDA_VISIBLE_DEVICES is emptied) with
torch's default thread count, as our runs use. A global torch.optim step hook counts the steps of
the generator's optimizer (the global named optimizer_G / optimizerG). On the KeyboardInterrupt the
script's globals are read from the traceback's module frame and its generator (`generator` with
opt.latent_dim, or `netG` with nz) writes N images under torch.no_grad(): in train mode, unless the
script itself calls .eval() (neither family does: both sample their grids from the generator in
train mode, so BatchNorm uses the batch's statistics; the batches are the script's training batch
size). Images are mapped from [-1, 1] to [0, 1] as our common.save_pngs does and saved as PNGs at
the script's native size (28, 32 or 64): evaluate.py reads a folder at its images' size and resizes
the real digits to that same size, then both to the classifier's 28 x 28, exactly the path our 32 x 32
samples take. Then `evaluate.py OUT/samples --dataset mnist --data_root DIR --n N --json --seed 0`.

Appends one record to results/public.jsonl (--no-record skips it; its grid is kept in docs/images/runs/)
that benchmarks/report.py sets beside our script's run of the same day and machine, and prints one JSON
line and a Markdown row: script, minutes, generator steps, FID, KID, precision, recall.
"""

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
LONG = "1000000"  # epochs: never reached, the wall clock stops the run


def family(script):
    """How to run a known public script: its working folder, data folder, flags and global names."""
    source = script.read_text()
    if '"../../data/mnist"' in source:  # eriklindernoren/PyTorch-GAN
        return dict(
            name="PyTorch-GAN", cwd=f"implementations/{script.parent.name}", data="data/mnist",
            flags=["--n_epochs", LONG], data_flags=[], generator="generator", optimizer="optimizer_G",
            eval=".eval()" in source,
        )  # fmt: skip
    if "--dataroot" in source and "netG" in source:  # pytorch/examples dcgan/main.py
        return dict(
            name="pytorch/examples", cwd="dcgan", data="data/mnist",
            flags=["--niter", LONG], data_flags=["--dataset", "mnist", "--dataroot"], generator="netG",
            optimizer="optimizerG", eval=".eval()" in source,
        )  # fmt: skip
    raise SystemExit(f"{script}: neither a PyTorch-GAN implementation nor pytorch/examples' dcgan/main.py")


def link_mnist(data_root, target):
    """target/MNIST/raw/<the four IDX files>: symlinks to data_root's (unpacked copies of .gz files)."""
    raw_from, raw_to = Path(data_root).resolve() / "MNIST" / "raw", target / "MNIST" / "raw"
    raw_to.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        src, dst = raw_from / name, raw_to / name
        if dst.exists() or dst.is_symlink():
            continue
        if src.is_file():
            dst.symlink_to(src)
        elif src.with_suffix(".gz").is_file():
            with gzip.open(src.with_suffix(".gz")) as f, open(dst, "wb") as out:
                shutil.copyfileobj(f, out)
        else:
            raise SystemExit(f"{src}(.gz) missing: --data_root needs MNIST/raw/ as torchvision lays it out")


# -- The child: run the script, stop it, sample its generator -------------------------------------------
def child(spec_path):
    spec = json.loads(Path(spec_path).read_text())
    fam, seed, script = spec["family"], spec["seed"], spec["script"]
    import runpy

    import numpy as np
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    steps, stop = [0], [False]

    def after_step(optimizer, args, kwargs):
        if optimizer is vars(sys.modules["__main__"]).get(fam["optimizer"]):
            steps[0] += 1
            if stop[0]:
                raise KeyboardInterrupt  # after a whole generator step, as our scripts stop

    def on_sigint(signum, frame):
        if stop[0] or steps[0] == 0:
            raise KeyboardInterrupt
        stop[0] = True

    register_optimizer_step_post_hook(after_step)
    signal.signal(signal.SIGINT, on_sigint)
    sys.argv = [script, *spec["args"]]
    sys.path.insert(0, str(Path(script).parent))
    start = time.perf_counter()
    try:
        found = runpy.run_path(script, run_name="__main__")
        how = "finished"
    except KeyboardInterrupt as e:
        found, tb, how = None, e.__traceback__, "interrupted"
        while tb is not None:  # the script's module-level frame holds its globals
            if tb.tb_frame.f_code.co_filename == script and tb.tb_frame.f_code.co_name == "<module>":
                found = tb.tb_frame.f_globals
            tb = tb.tb_next
        if found is None or fam["generator"] not in found:
            raise SystemExit("stopped before the script built its generator: give it more minutes")
    trained_s = time.perf_counter() - start
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    G = found[fam["generator"]]
    if fam["generator"] == "netG":  # pytorch/examples: z is nz x 1 x 1
        z_shape, batch = (int(found["nz"]), 1, 1), found["opt"].batchSize
    else:
        z_shape, batch = (found["opt"].latent_dim,), found["opt"].batch_size
    G.train(not fam["eval"])
    from torchvision.utils import save_image

    def png(images, path, **kw):  # [-1, 1] -> [0, 1], clamped, as common.save_pngs writes ours
        save_image(images, path, normalize=True, value_range=(-1, 1), **kw)

    n, folder = spec["n"], Path(spec["samples"])
    folder.mkdir(parents=True, exist_ok=True)
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for first in range(0, n, batch):  # full batches, so train-mode BatchNorm sees the training size
            x = G(torch.randn(batch, *z_shape, generator=noise))[: n - first].float().cpu()
            for i, image in enumerate(x):
                png(image, folder / f"{first + i:06d}.png", padding=0)
            if first == 0:
                png(x[:64], Path(spec["out"]) / "grid.png", nrow=8)
    info = dict(
        steps=steps[0], how=how, trained_s=round(trained_s, 1), mode="train" if G.training else "eval",
        batch=batch, size=x.shape[-1], threads=torch.get_num_threads(),
    )  # fmt: skip
    Path(spec["out"], "child.json").write_text(json.dumps(info))


# -- The parent: lay out the data, time the child, evaluate ---------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:
        return child(argv[1])
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("script", type=Path, help="the public script (.py)")
    parser.add_argument("--data_root", required=True, help="MNIST folder (torchvision layout: MNIST/raw/)")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random, numpy and torch seed (default 0)")
    parser.add_argument("--n", type=int, default=1000, help="samples to write and measure (default 1000)")
    parser.add_argument("--out", required=True, type=Path, help="run folder: work/, samples/, train.log")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append a record to RESULTS/public.jsonl, keep the grid (on)")  # fmt: skip
    parser.add_argument("--results", default=None, help="records folder (default results/; $GAN_RESULTS_DIR)")
    parser.add_argument("--grids", default=str(ROOT / "docs" / "images" / "runs"),
                        help="where the run's grid is kept (default docs/images/runs/)")  # fmt: skip
    args = parser.parse_args(argv)
    script = args.script.resolve()
    fam = family(script)
    out = args.out.resolve()
    work = out / "work"
    if (out / "samples").exists():
        raise SystemExit(f"{out}/samples exists: give a fresh --out")
    cwd, data = work / fam["cwd"], work / fam["data"]
    cwd.mkdir(parents=True, exist_ok=True)
    link_mnist(args.data_root, data)
    script_args = [*fam["flags"], *fam["data_flags"], *([str(data)] if fam["data_flags"] else [])]
    if "--manualSeed" in script.read_text():
        script_args += ["--manualSeed", str(args.seed)]
    script_args += extra  # the user's flags come last: argparse keeps the last value
    spec = dict(
        script=str(script), args=script_args, family=fam, seed=args.seed, n=args.n,
        samples=str(out / "samples"), out=str(out),
    )  # fmt: skip
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    with open(out / "train.log", "w") as log:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", str(out / "spec.json")]
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=args.minutes * 60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (out / "train.log").read_text()[-3000:]
        raise SystemExit(f"{script} failed (exit {proc.returncode}):\n{tail}")
    info = json.loads((out / "child.json").read_text())
    cmd = [sys.executable, str(ROOT / "evaluate.py"), str(out / "samples"), "--dataset", "mnist"]
    cmd += ["--data_root", args.data_root, "--n", str(args.n), "--json", "--seed", "0", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"evaluate.py failed:\n{result.stderr[-3000:]}")
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    name = f"{fam['name']} {script.parent.name}/{script.name}"
    row = dict(script=name, minutes=args.minutes, wall_s=round(wall, 1), **info, seed=args.seed)
    row.update({k: metrics[k] for k in ("fid", "kid", "precision", "recall")})
    row.update(flags=" ".join(script_args), machine=f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, cpu")  # fmt: skip
    if args.record:  # named as report.py pairs it with ours: "PyTorch-GAN wgan.py", "pytorch/examples dcgan"
        label = script.name if fam["name"] == "PyTorch-GAN" else script.parent.name
        record = records.new_record(
            "public", "cpu", script=f"{fam['name']} {label}", flags=" ".join(extra),
            budget_min=args.minutes, steps=info["steps"], wall_s=row["wall_s"], seed=args.seed, n=args.n,
            sampled_in=info["mode"] + " mode",
            metrics={k: metrics[k] for k in ("fid", "kid", "precision", "recall")},
        )  # fmt: skip
        grids = Path(args.grids)
        grids.mkdir(parents=True, exist_ok=True)
        name = f"public_{fam['name']}_{script.parent.name}_{args.minutes:g}min_{record['date']}.png"
        shutil.copyfile(out / "grid.png", grids / name.replace("/", "_"))
        kept = (grids / name.replace("/", "_")).resolve()
        record["grid"] = str(kept.relative_to(ROOT)) if kept.is_relative_to(ROOT) else str(kept)
        records.append(record, args.results)
    print(json.dumps(row), flush=True)
    print("\n| script | minutes | G steps | FID | KID | precision | recall |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {name} | {args.minutes:g} | {info['steps']} | {row['fid']:.1f} | {row['kid']:.3f} | "
        f"{row['precision']:.2f} | {row['recall']:.2f} |"
    )
    return row


if __name__ == "__main__":
    main()
