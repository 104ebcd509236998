"""WGAN: the Wasserstein GAN, its critic kept Lipschitz by clipping its weights.

Paper: Martin Arjovsky, Soumith Chintala, Leon Bottou. "Wasserstein GAN", ICML 2017.
https://arxiv.org/abs/1701.07875

A critic f (no sigmoid: it scores, it does not classify) is trained to maximize
E_x[f(x)] - E_z[f(G(z))], which for a K-Lipschitz f estimates K times the Wasserstein-1 (earth
mover's) distance between the data and G's distribution. Algorithm 1:

    loss_f = mean f(G(z)) - mean f(x)          then clip every critic parameter to [-c, c]
    loss_G = -mean f(G(z))                     once every n_critic critic updates

Clipping the weights to a compact set keeps f Lipschitz (with an unknown constant); the paper
calls it "a clearly terrible way to enforce a Lipschitz constraint", and WGAN-GP replaces it.
The logged `wasserstein` column is mean f(x) - mean f(G(z)) on the last critic batch: it should
fall as the samples improve.

Defaults, and where they come from (Algorithm 1 and section 4):
- RMSprop (the paper found momentum-based optimizers such as Adam unstable here), clip c = 0.01
  (--clip), n_critic = 5 (--critic_repeats), batch 64; each critic update draws a fresh real batch.
- The one departure from Algorithm 1's training: lr 2e-4 (the rate DCGAN uses with Adam), not
  5e-5 (--lr 5e-5 gives the paper's). At 5e-5 the clipped critic and G learn slowly: at equal
  CPU time 2e-4 scored far better, and in fewer steps (the runs: docs/levers.md, and
  docs/wgan.md, "Departures from the paper"). What changes is how far each step goes, not how
  fast steps run.
- DCGAN-shaped networks: G with BatchNorm + ReLU and tanh; the critic with strided convs,
  BatchNorm and LeakyReLU 0.2, as in the authors' code; --hidden_dim 64 filters at the image
  end, doubling toward 4 x 4; images 32 x 32. DCGAN's N(0, 0.02) init for both.
- The authors' code (github.com/martinarjovsky/WassersteinGAN) also trains the critic 100 times
  per generator step during the first 25 generator steps and at every 500th, so that the critic
  is near its optimum when the estimate matters; that is not in the paper's Algorithm 1 and is
  off by default here: --warmup_critic turns it on.
- Speed: --amp (a departure measured on the model's page) runs the networks' forward passes in bfloat16
  autocast and hands back float32 scores, so the losses are float32 (and the clipping acts on the
  float32 weights); --compile runs the steps through torch.compile'd G and critic that share the
  networks' parameters (checkpoints hold the plain modules); channels_last on the CPU, and on
  CUDA under --amp with cudnn.benchmark, unless --deterministic. train() wraps the networks once
  (common.Run.fast), so the step functions below are plain float32 maths.

Samples (the grids, --generate, the latent walk, the quality figure) come from an exponential
moving average of G's weights (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498), not from G
itself: a departure from the paper that changes no training step (--ema 0 samples from G).
Its BatchNorm statistics are G's, copied: recomputed from its own samples (common.own_statistics,
as the other image scripts do) they scored worse here (docs/evaluate.md, sampling records).

Examples:
    python wgan.py --data_root ./data                         # MNIST at 32 x 32
    python wgan.py --lr 5e-5 --warmup_critic --epochs 100     # the authors' code: their lr and schedule
    python wgan.py --dataset cifar10 --out runs/wgan_cifar
"""

import argparse
import math

import torch
import torch.nn as nn

import common

SCRIPT = "wgan.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim")
EPOCH_HELP = (
    "An epoch is one pass of the real data through the critic (each critic update draws a fresh "
    "real batch); G is updated once per --critic_repeats critic updates, counted across epoch boundaries."
)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + EPOCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_flags(
        parser,
        "wgan",
        lr=2e-4,
        batch=64,
        hidden_dim=64,
        critic_repeats=5,
        zdim=100,
        epochs=25,
        lr_source="a departure: Algorithm 1 has 5e-5, which learns far more slowly per step",
        logit=False,  # a critic's score has no fixed zero: no --augment_p ada
    )
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=32, help="images are resized to N x N (default 32)")
    p(
        "--clip",
        type=common.positive_float,
        default=0.01,
        help="every critic parameter is clamped to [-clip, clip] after each update (default 0.01)",
    )
    p(
        "--warmup_critic",
        action="store_true",
        help="the authors' code's schedule: 100 critic updates per G update for the first 25 G "
        "updates and every 500th (default off: always --critic_repeats)",
    )
    common.add_speed_flags(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Networks: DCGAN-shaped generator and critic
# ---------------------------------------------------------------------------------------------


def widths(hidden_dim, image_size):
    """Channels from the 4 x 4 end to the image end, e.g. 32 px: [4h, 2h, h]."""
    return [hidden_dim * 2**i for i in reversed(range(int(math.log2(image_size)) - 2))]


class Generator(nn.Module):
    """z -> ConvTranspose 4x4 to 4 x 4 x 4h -> (ConvTranspose 4x4 stride 2, BN, ReLU) ... -> tanh."""

    def __init__(self, zdim, hidden_dim, image_size, channels):
        super().__init__()
        w = widths(hidden_dim, image_size)
        layers = [nn.ConvTranspose2d(zdim, w[0], 4, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN's init: N(0, 0.02) filters, BN gain N(1, 0.02)
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):
        return self.net(z.view(len(z), -1, 1, 1))


class Critic(nn.Module):
    """Image -> (Conv 4x4 stride 2, BN, LeakyReLU 0.2) ... -> 4 x 4 x 4h -> Conv 4x4 -> score (no sigmoid)."""

    def __init__(self, hidden_dim, image_size, channels):
        super().__init__()
        w = widths(hidden_dim, image_size)[::-1]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(w[-1], 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x).view(-1)


# ---------------------------------------------------------------------------------------------
# The two steps of Algorithm 1
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_weights(critic, c):
    """Clamp every parameter (BatchNorm's gain and offset too) to [-c, c]: the compact weight set."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def critic_step(G, critic, opt_c, real, z, clip, augment):
    """One critic update: descend f(G(z)) - f(x), then clip. Returns (loss, Wasserstein estimate).

    Under torchrun the update is the same on every process (averaged gradients, same weights), so
    the clipping that follows it is too."""
    with torch.no_grad():
        fake = G(z)
    wasserstein = critic(augment(real)).mean() - critic(augment(fake)).mean()  # augment: --augment
    loss = -wasserstein
    opt_c.zero_grad(set_to_none=True)
    loss.backward()
    opt_c.step()
    clip_weights(critic, clip)
    return loss, wasserstein


def critic_updates(step, args):
    """n_critic before generator step `step` (counted from 0): --critic_repeats, or the authors' schedule."""
    if args.warmup_critic and (step < 25 or step % 500 == 0):
        return 100
    return args.critic_repeats


def generator_steps(args, batches):
    """The generator steps whose critic updates fit in --epochs passes of `batches` real batches."""
    total, planned = 0, 0
    while planned + critic_updates(total, args) <= args.epochs * batches:
        planned += critic_updates(total, args)
        total += 1
    return total


def generator_step(G, critic, opt_g, z, augment):
    """One generator update: descend -f(G(z)) (through augment). The critic's weights are frozen."""
    critic.requires_grad_(False)
    loss = -critic(augment(G(z))).mean()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    critic.requires_grad_(True)
    return loss


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build(args, channels, device, memory_format=torch.contiguous_format):
    G = Generator(args.zdim, args.hidden_dim, args.image_size, channels)
    critic = Critic(args.hidden_dim, args.image_size, channels)
    G, critic = G.to(device, memory_format=memory_format), critic.to(device, memory_format=memory_format)
    clip_weights(critic, args.clip)  # the critic starts inside the clipped set, as it stays
    opt_g = torch.optim.RMSprop(G.parameters(), lr=args.lr)
    opt_c = torch.optim.RMSprop(critic.parameters(), lr=args.lr)
    return G, critic, opt_g, opt_c


@torch.no_grad()
def sample(G, z):
    G.eval()
    images = torch.cat([G(chunk) for chunk in z.split(512)])
    G.train()
    return images


def train(args):
    run = common.Run(args, SCRIPT, SHAPE_FLAGS)
    run.own_averages = False  # G_ema samples on G's copied BatchNorm statistics: its own scored worse here
    if args.generate:
        G = build(args, run.channels, run.device)[0]
        run.track(G_ema=G)  # samples come from G's average
        return run.generate(lambda z: sample(G, z), args.zdim)
    data = common.make_batches(args, run.device)
    G, critic, opt_g, opt_c = build(args, data.channels, run.device, run.memory_format)
    fixed_z = torch.randn(64, args.zdim, device=run.device)
    G_ema = common.average_of(G)  # what the grids, --generate and the quality figure sample
    run.track(G=G, D=critic, opt_g=opt_g, opt_d=opt_c, G_ema=G_ema, fixed_z=fixed_z)
    # the steps call these wrappers; they share the parameters, so clipping fast_critic clips the critic
    fast_G, fast_critic = run.fast(G), run.fast(critic)
    total = generator_steps(args, len(data))
    run.start(data, total, grid=lambda: sample(G_ema, fixed_z), sample=lambda z: sample(G_ema, z))
    with run:
        while run.running():
            n_critic = critic_updates(run.step, args)
            for _ in range(n_critic):  # z ~ N(0, I): run.randn gives each process its own
                real = run.real_batch()
                z = run.randn(len(real), args.zdim)
                loss_c, wasserstein = critic_step(fast_G, fast_critic, opt_c, real, z, args.clip, run.augment)
            loss_g = generator_step(fast_G, fast_critic, opt_g, run.randn(data.batch, args.zdim), run.augment)
            common.ema_update(G_ema, G, args.ema, run.step)
            run.step_done(data.batch * n_critic, loss_c=loss_c, loss_g=loss_g, wasserstein=wasserstein)
    plots = [["loss_c", "loss_g"], ["wasserstein"]]
    run.finish(plots, title=f"{SCRIPT} (clip {args.clip})")
    return G, critic


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
