"""How to sample a trained checkpoint: from G or from its average G_ema, and with BatchNorm in eval
mode on the running statistics the checkpoint holds (G_ema's are copied from G), in eval mode on
statistics of G_ema's own (common.own_statistics: what every figure, the last grid and --generate
use), or in train mode (each batch's own statistics, batches of 64, what many public
implementations do without saying so).

    python benchmarks/sampling.py runs/dcgan/checkpoint.pt runs/wgan/checkpoint.pt --data_root DIR \
        [--record --flags "..." --note "..."]

For each checkpoint: the classifier FID (evaluate.py's in-training figure: 1,000 samples against
every training image) of the five ways, all from the same 1,000 latent vectors. Nothing is trained.
--record appends each checkpoint's figures to results/sampling.jsonl (benchmarks/records.py).
Image scripts with one G (not dcgan_classwise); MNIST-like data (one channel).
"""

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import evaluate  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402
from quality import data_label  # noqa: E402


@torch.no_grad()
def images(G, z, train_mode):
    G.train(train_mode)
    out = torch.cat([G(chunk) for chunk in z.split(64)])
    G.eval()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data_root", required=True, help="the data set's folder (torchvision layout)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the latent vectors (default 123)")
    parser.add_argument("--record", action="store_true", help="append each checkpoint's figures as a record")
    parser.add_argument("--note", default="", help="the records' note: what the checkpoints are")
    parser.add_argument("--flags", default="", help="the flags the checkpoints were trained with")
    opts = parser.parse_args(argv)
    cpu = torch.device("cpu")
    names = ["G_ema_eval_bn", "G_ema_own_bn", "G_ema_batch_bn", "G_eval_bn", "G_batch_bn"]
    print("| checkpoint | step | " + " | ".join(names) + " |")
    print("| --- | --- |" + " --- |" * len(names))
    for path in opts.checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        module = importlib.import_module(ckpt["script"].removesuffix(".py"))
        args = argparse.Namespace(**ckpt["args"])
        meter = evaluate.quality_meter(args.dataset, opts.data_root, args.image_size, 1, cpu, 1000)
        G = module.build(args, 1, cpu)[0]
        z = torch.randn(1000, args.zdim, generator=torch.Generator().manual_seed(opts.seed))
        fids = []
        for name in ("G_ema", "G"):
            for way in ("eval", "own", "batch") if name == "G_ema" else ("eval", "batch"):
                G.load_state_dict(ckpt[name])  # batch mode updates the running statistics: reload
                if way == "own":  # as a run samples: seeded by its --seed
                    with common.own_statistics([G], args.zdim, cpu, seed=args.seed + 3):
                        fids.append(meter(images(G, z, False)))
                else:
                    fids.append(meter(images(G, z, way == "batch")))
        print(f"| {path} | {ckpt['step']} | " + " | ".join(f"{f:.1f}" for f in fids) + " |", flush=True)
        if opts.record:
            record = records.new_record(
                "sampling",
                script=ckpt["script"].removesuffix(".py"),
                flags=opts.flags,
                data=data_label(opts.data_root, opts.flags),
                budget_min=round(ckpt["elapsed"] / 60, 1) if "elapsed" in ckpt else None,
                steps=ckpt["step"],
                metrics={n: round(f, 2) for n, f in zip(names, fids)},
                note=opts.note,
            )
            print(f"recorded in {records.append(record)}")


if __name__ == "__main__":
    main()
