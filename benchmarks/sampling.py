"""How to sample a trained checkpoint: from G or from its average G_ema, and with BatchNorm in eval
mode (the running statistics, what every script's sample() uses) or in train mode (each batch's own
statistics, batches of 64, what many public implementations do without saying so).

    python benchmarks/sampling.py runs/dcgan/checkpoint.pt runs/wgan/checkpoint.pt --data_root DIR

For each checkpoint: the classifier FID (evaluate.py's in-training figure: 1,000 samples against
every training image) of the four ways, all from the same 1,000 latent vectors. Nothing is trained.
Image scripts with one G (not dcgan_classwise); MNIST-like data (one channel).
"""

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402


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
    opts = parser.parse_args(argv)
    cpu = torch.device("cpu")
    print("| checkpoint | step | G_ema, eval BN | G_ema, batch BN | G, eval BN | G, batch BN |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in opts.checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        module = importlib.import_module(ckpt["script"].removesuffix(".py"))
        args = argparse.Namespace(**ckpt["args"])
        meter = evaluate.quality_meter(args.dataset, opts.data_root, args.image_size, 1, cpu, 1000)
        G = module.build(args, 1, cpu)[0]
        z = torch.randn(1000, args.zdim, generator=torch.Generator().manual_seed(opts.seed))
        fids = []
        for name in ("G_ema", "G"):
            for train_mode in (False, True):
                G.load_state_dict(ckpt[name])  # batch mode updates the running statistics: reload
                fids.append(meter(images(G, z, train_mode)))
        print(f"| {path} | {ckpt['step']} | " + " | ".join(f"{f:.1f}" for f in fids) + " |", flush=True)


if __name__ == "__main__":
    main()
