"""One process of a test run under torchrun (used by test_distributed.py).

The script trains through its real main() as a user's run would, but from a folder of this
process's own, OUT/rank<R>/, so that anything a process other than rank 0 writes is caught there.
Afterwards the networks it trained go to OUT/nets_<R>.pt for the test to compare across processes.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py SCRIPT OUT \
        [--freeze_g_statistics] ARGS

--freeze_g_statistics puts G's BatchNorm in eval mode (fixed statistics) for the whole run, so
that 2 processes with batch b and 1 process with batch 2b compute the same function: the test then
compares the distributed arithmetic (averaged gradients, shares of data and noise, the penalty)
and not per-process batch statistics, which differ by design (--sync_bn, GPU only, shares them).
"""

import importlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def states(trained):
    """{name: state_dict} of what main() returned: (G, D), or dcgan_classwise's {class: (G, D)}."""
    if isinstance(trained, dict):
        return {
            f"{name}_{c}": net.state_dict() for c, pair in trained.items() for name, net in zip("GD", pair)
        }
    return {name: net.state_dict() for name, net in zip("GD", trained)}


def main():
    script, out, *argv = sys.argv[1:]
    freeze = argv[:1] == ["--freeze_g_statistics"]
    argv = argv[1:] if freeze else argv
    rank = int(os.environ.get("RANK", "0"))
    folder = Path(out).resolve() / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    module = importlib.import_module(script)
    if freeze:
        build = module.build

        def build_with_frozen_statistics(*args, **kwargs):
            G, *rest = build(*args, **kwargs)
            return (G.eval(), *rest)

        module.build = build_with_frozen_statistics
    trained = module.main(argv)
    torch.save(states(trained), folder.parent / f"nets_{rank}.pt")


if __name__ == "__main__":
    main()
