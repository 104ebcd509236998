"""A GAN that learns a Normal distribution from uniform noise: the smallest complete GAN.

Paper: Ian J. Goodfellow, Jean Pouget-Abadie, Mehdi Mirza, Bing Xu, David Warde-Farley, Sherjil Ozair,
Aaron Courville, Yoshua Bengio. "Generative Adversarial Nets", NeurIPS 2014.
https://arxiv.org/abs/1406.2661  (figure 1 shows this game in one dimension)

The data are samples of N(mean, std^2) in --dims dimensions (N(3, 1) in 1-D by default); the noise z
is uniform on [-1, 1]^zdim. The generator must learn the map from one to the other: in 1-D, the
Normal's inverse CDF composed with the uniform's CDF. The game, as in the paper:

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]

loss_D = -log D(x) - log(1 - D(G(z)))   on logits (BCE with logits, numerically stable)
loss_G = -log D(G(z))                   the non-saturating loss the paper recommends

Networks (widths scale with --hidden_dim H, default 16; the paper gives none for figure 1: these
small ReLU nets, a departure, come from the implementation this collection grew from):
    D: dims -> H -> H -> H/2 -> 1 logit, ReLU and dropout 0.5 after each hidden layer (16-16-8)
    G: zdim -> H -> 2H -> H -> dims, ReLU, linear output                              (16-32-16)
5,000 steps; a step is --critic_repeats D updates (1, as in the paper's experiments) then one G
update. Real samples come from a training set of --train_size points drawn once; an epoch is one
pass over it (--epochs, if given, replaces --steps).

Optimisation: Adam, betas (0.5, 0.999), batch 64, D's learning rate 1e-3 five times G's 2e-4, both
decaying linearly to 0 over the run. The paper used SGD with momentum and, in its code, a decaying
learning rate; what it needs is a D close to optimal for each G (its k D steps per G step). A faster
D (Heusel et al. 2017, arXiv:1706.08500) gives that at one D step per G step. With equal rates,
Adam or SGD, the generated std collapsed and the mean kept swinging (the sweep that showed it:
docs/gan_gaussian.md, "Departures from the paper").

Examples:
    python gan_gaussian.py                      # N(3, 1) in 1-D: runs/gan_gaussian/*.png
    python gan_gaussian.py --dims 2 --mean -1 --std 0.5
    python gan_gaussian.py --resume runs/gan_gaussian/checkpoint.pt --generate 1000
"""

import argparse
import csv

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "gan_gaussian.py"
SHAPE_FLAGS = ("dims", "zdim", "hidden_dim")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.script = SCRIPT
    p = parser.add_argument
    p("--steps", type=common.positive_int, default=5000, help="generator updates (default 5000)")
    p(
        "--epochs",
        type=common.positive_int,
        default=None,
        help="if set, train for this many passes over the --train_size real samples instead of --steps "
        "(one pass = train_size / batch steps; default: use --steps)",
    )
    p("--zdim", type=common.positive_int, default=None, help="noise dimensions (default: same as --dims)")
    p("--lr", type=common.positive_float, default=2e-4, help="G's Adam learning rate (default 0.0002)")
    p("--lr_d", type=common.positive_float, default=1e-3, help="D's Adam learning rate (default 0.001)")
    p("--batch", type=common.positive_int, default=64, help="batch size (default 64)")
    p("--hidden_dim", type=common.positive_int, default=16, help="width H: D H-H-H/2, G H-2H-H (default 16)")
    p("--critic_repeats", type=common.positive_int, default=1, help="D updates per G update (default 1)")
    p(
        "--device",
        default="auto",
        help="auto (= cpu here: networks of 16 units are faster on the CPU than on a GPU, and the "
        "figures in docs/gan_gaussian.md are the CPU's random stream), cpu, cuda, cuda:1, mps (default auto)",
    )
    p("--dims", type=common.positive_int, default=1, help="dimensions of the target Normal (default 1)")
    p("--mean", type=float, default=3.0, help="target mean, every dimension (default 3)")
    p("--std", type=common.positive_float, default=1.0, help="target standard deviation (default 1)")
    p("--noise", choices=("uniform", "normal"), default="uniform", help="U[-1,1] or N(0,1) (default uniform)")
    p(
        "--train_size",
        type=common.positive_int,
        default=10_000,
        help="real samples, drawn once (default 10000)",
    )
    p("--out", default="runs/gan_gaussian", help="run folder (default runs/gan_gaussian)")
    p("--seed", type=int, default=0, help="seeds torch, numpy and python (default 0)")
    p("--max_steps", type=common.positive_int, default=None, help="stop after N updates (default: none)")
    p(
        "--resume",
        default=None,
        help="checkpoint to continue from (its flags, but this run's --device; default none). "
        f"{common.RESUME_AUTO_HELP}",
    )
    common.add_save_minutes(parser)
    p(
        "--generate",
        type=common.positive_int,
        default=None,
        help="with --resume: N samples to OUT/generated.csv (default: off)",
    )
    p("--log_every", type=common.positive_int, default=50, help="log row every N steps (default 50)")
    return parser


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z -> H -> 2H -> H -> dims, ReLU, linear output (a sample can be any real number)."""

    def __init__(self, zdim, dims, h=16):
        super().__init__()
        layers = [
            nn.Linear(zdim, h),
            nn.ReLU(),
            nn.Linear(h, 2 * h),
            nn.ReLU(),
            nn.Linear(2 * h, h),
            nn.ReLU(),
        ]
        self.net = nn.Sequential(*layers, nn.Linear(h, dims))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    """x -> H -> H -> H/2 -> 1 logit, ReLU and dropout 0.5 after each hidden layer."""

    def __init__(self, dims, h=16):
        super().__init__()
        widths, layers = [dims, h, h, max(h // 2, 1)], []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.5)]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, x):
        return self.net(x).view(-1)


def noise(n, zdim, kind, device, generator=None):
    if kind == "uniform":
        return torch.rand(n, zdim, device=device, generator=generator) * 2 - 1
    return torch.randn(n, zdim, device=device, generator=generator)


# ---------------------------------------------------------------------------------------------
# The losses and the two steps of Algorithm 1
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits):
    """-log D(x) - log(1 - D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits):
    """-log D(G(z)), the non-saturating loss."""
    return F.softplus(-fake_logits).mean()


def d_step(G, D, opt_d, real, args):
    fake = G(noise(len(real), args.zdim, args.noise, real.device)).detach()
    loss = discriminator_loss(D(real), D(fake))
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, args, device):
    loss = generator_loss(D(G(noise(args.batch, args.zdim, args.noise, device))))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss


@torch.no_grad()
def generate(G, n, args, device, seed):
    G.eval()
    x = G(noise(n, args.zdim, args.noise, device, torch.Generator(device).manual_seed(seed)))
    G.train()
    return x


# ---------------------------------------------------------------------------------------------
# Training and plots
# ---------------------------------------------------------------------------------------------


def plot_distribution(real, fake, args, path):
    plt = common.pyplot()
    dims = real.shape[1]
    fig, axes = plt.subplots(1, dims, figsize=(5 * min(dims, 4), 3.6), squeeze=False)
    for d, ax in enumerate(axes[0]):
        lo = min(real[:, d].min(), fake[:, d].min()).item()
        hi = max(real[:, d].max(), fake[:, d].max()).item()
        bins = torch.linspace(lo, hi, 80).tolist()
        for x, label in ((real, f"real N({args.mean:g}, {args.std:g}²)"), (fake, "generated")):
            ax.hist(x[:, d].tolist(), bins=bins, density=True, alpha=0.5, label=label)
        ax.set_title(f"dimension {d}: generated mean {fake[:, d].mean():.3f}, std {fake[:, d].std():.3f}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mean_std(out, args, path):
    plt = common.pyplot()
    rows = common.read_log(out)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for ax, key, target in zip(axes, ("mean", "std"), (args.mean, args.std)):
        ax.plot([r["step"] for r in rows], [r[f"gen_{key}"] for r in rows], label=f"generated {key} (dim 0)")
        ax.axhline(target, color="k", ls="--", label=f"target {target:g}")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[1].set_xlabel("generator step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class NormalSamples:
    """--train_size points of N(mean, std^2) drawn once, served in batches reshuffled each epoch."""

    def __init__(self, args, device):
        self.points = args.mean + args.std * torch.randn(args.train_size, args.dims, device=device)
        self.batch, self.seed = args.batch, args.seed

    def __len__(self):
        return max(len(self.points) // self.batch, 1)

    def batches(self, epoch, start=0):
        shuffle = torch.Generator().manual_seed(self.seed * 100_003 + epoch)  # a function of (seed, epoch)
        order = torch.randperm(len(self.points), generator=shuffle).to(self.points.device)  # once an epoch
        for j in range(start, len(self)):
            yield self.points[order[j * self.batch : (j + 1) * self.batch]]


def train(args):
    run = common.Run(args, SCRIPT, SHAPE_FLAGS, conv=False, auto_device="cpu", one_process=True)
    G = Generator(args.zdim, args.dims, args.hidden_dim).to(run.device)
    D = Discriminator(args.dims, args.hidden_dim).to(run.device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.5, 0.999))
    data = NormalSamples(args, run.device)
    run.track(G=G, D=D, opt_g=opt_g, opt_d=opt_d, real_set=data.points)
    if args.generate:
        run.out.mkdir(parents=True, exist_ok=True)
        with open(run.out / "generated.csv", "w", newline="") as f:
            csv.writer(f).writerows(generate(G, args.generate, args, run.device, args.seed).tolist())
        print(f"wrote {args.generate} samples to {run.out / 'generated.csv'}")
        return None
    planned = args.epochs * len(data) // args.critic_repeats if args.epochs else args.steps

    def stats():  # of dimension 0, on the same 1,000 noise vectors each time
        x = generate(G, 1000, args, run.device, seed=12345)[:, 0]
        return {"gen_mean": x.mean().item(), "gen_std": x.std().item()}

    run.start(data, planned, about=f"N({args.mean:g}, {args.std:g}^2) in {args.dims}-D", log_extra=stats)
    with run:
        while run.running():
            for opt, lr in ((opt_g, args.lr), (opt_d, args.lr_d)):  # linear decay to 0 over the plan
                for group in opt.param_groups:
                    group["lr"] = lr * (1 - run.step / planned)
            for _ in range(args.critic_repeats):
                loss_d = d_step(G, D, opt_d, run.real_batch(), args)
            loss_g = g_step(G, D, opt_g, args, run.device)
            run.step_done(args.batch * args.critic_repeats, loss_d=loss_d, loss_g=loss_g)
    run.finish(losses=[["loss_d", "loss_g"]], title="gan_gaussian: D and G losses")

    fake = generate(G, 10_000, args, run.device, seed=args.seed + 1).cpu()
    plot_distribution(data.points.cpu(), fake, args, run.out / "distribution.png")
    plot_mean_std(run.out, args, run.out / "mean_std.png")
    print(f"generated: mean {fake.mean(0).tolist()}, std {fake.std(0).tolist()}")
    return G, D, fake.mean(0), fake.std(0)


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.zdim is None:
        args.zdim = args.dims
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks of 16 units: more CPU threads only add synchronisation (10x slower)
    try:
        return train(args)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
