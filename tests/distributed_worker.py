"""One process of a test run under torchrun (used by test_distributed.py).

Each script trains through its real main() as a user's run would, but from a folder of this
process's own, OUT/rank<R>/, so that anything a process other than rank 0 writes is caught there.
Afterwards the networks it trained go to OUT/nets_<R>_<SCRIPT>.pt for the test to compare across
processes.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT \
        [--freeze_g_statistics] [--quick_ada] SCRIPT ARGS [--then SCRIPT ARGS ...]

Several scripts separated by --then train one after the other in the same processes (one launch:
a torchrun's start-up costs more than a few tiny steps); the worker then joins the process group
itself (common.start_processes, as benchmarks/throughput.py does), so that each run finds it made
and must leave it standing.

--freeze_g_statistics puts G's BatchNorm in eval mode (fixed statistics) for the whole run, so
that 2 processes with batch b and 1 process with batch 2b compute the same function: the test then
compares the distributed arithmetic (averaged gradients, shares of data and noise, the penalty)
and not per-process batch statistics, which differ by design (--sync_bn, GPU only, shares them).

--quick_ada makes --augment_p ada move within a few steps: p rises every 2 steps (whatever D's
signs), by 1 per 64 real images of all processes, so that a 3-step run exercises the pooled move and
per-image coins at 0 < p < 1, and a resume to step 4 the sums the checkpoint carried.

A process that crashes (SIGABRT, SIGSEGV) prints where Python was (faulthandler). Once every run
has written its networks and left the process group, the worker leaves with os._exit, skipping
the interpreter's teardown. DistributedDataParallel keeps the gloo group and its worker threads
alive after destroy_process_group (torch 2.14: they outlive the DDP object), and a gloo thread
that releases a Python tensor while the interpreter shuts down aborts the process (pytorch#179291).
Rank 1 aborted once in CI ("terminate called without an active exception") when rank 0 had
finished its last run; not seen here in 42 launches, 30 of them beside busy processes. What the
tests check is written by then.
"""

import faulthandler
import importlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402


def states(trained):
    """{name: state_dict} of what main() returned: (G, D), or dcgan_classwise's {class: (G, D)}."""
    if isinstance(trained, dict):
        return {
            f"{name}_{c}": net.state_dict() for c, pair in trained.items() for name, net in zip("GD", pair)
        }
    return {name: net.state_dict() for name, net in zip("GD", trained)}


def train(script, argv, freeze, folder):
    module = importlib.import_module(script)
    if freeze:
        build = module.build

        def build_with_frozen_statistics(*args, **kwargs):
            G, *rest = build(*args, **kwargs)
            return (G.eval(), *rest)

        module.build = build_with_frozen_statistics
    trained = module.main(argv)
    if freeze:
        module.build = build
    return states(trained)


def main():
    out, *argv = sys.argv[1:]
    options = {"--freeze_g_statistics", "--quick_ada"}
    given = set()
    while argv and argv[0] in options:
        given.add(argv.pop(0))
    freeze = "--freeze_g_statistics" in given
    if "--quick_ada" in given:
        common.ADA_TARGET, common.ADA_INTERVAL, common.ADA_IMAGES = -1.0, 2, 64
    runs, run = [], []
    for word in argv:
        if word == "--then":
            runs.append(run)
            run = []
        else:
            run.append(word)
    runs.append(run)
    scripts = [r[0] for r in runs if r]
    if len(scripts) != len(runs) or len(set(scripts)) != len(scripts):
        raise SystemExit(f"distributed_worker: SCRIPT ARGS [--then SCRIPT ARGS ...], each once: {argv}")
    rank = int(os.environ.get("RANK", "0"))
    folder = Path(out).resolve() / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    ours = len(runs) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if ours:
        common.start_processes(torch.device("cpu"))
    for script, *args in runs:
        torch.save(train(script, args, freeze, folder), folder.parent / f"nets_{rank}_{script}.pt")
        if ours and not torch.distributed.is_initialized():
            raise SystemExit(f"{script} left the process group its caller made")
    if ours:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    faulthandler.enable()
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
