"""WGAN-GP: the Wasserstein GAN whose critic is kept 1-Lipschitz by a gradient penalty.

Paper: Ishaan Gulrajani, Faruk Ahmed, Martin Arjovsky, Vincent Dumoulin, Aaron Courville.
"Improved Training of Wasserstein GANs", NeurIPS 2017. https://arxiv.org/abs/1704.00028

A critic f (no sigmoid: it scores, it does not classify) estimates the Wasserstein-1 distance
W = E_x[f(x)] - E_z[f(G(z))], and instead of clipping its weights (WGAN) it is pushed toward
gradient norm 1 on points between real and generated images (Algorithm 1):

    x_hat  = eps * x + (1 - eps) * G(z),      eps ~ U[0, 1], one per sample (N x 1 x 1 x 1)
    loss_f = f(G(z)) - f(x) + lambda * (||grad_x_hat f(x_hat)||_2 - 1)^2   (mean over the batch)
    loss_G = -f(G(z))

The gradient is flattened per sample before its norm, and computed with create_graph=True so
that the penalty itself is differentiated with respect to the critic's weights.

Defaults, and where they come from:
- Algorithm 1: lambda (--c_lambda) 10, n_critic (--critic_repeats) 5, Adam betas (0, 0.9),
  batch 64. Each critic update draws a fresh real batch.
- Adam lr 2e-4, the authors' CIFAR-10 ResNet code's (gan_cifar_resnet.py, without its linear
  decay), not Algorithm 1's 1e-4 (--lr 1e-4 gives that): at equal CPU time it scored better on
  the MNIST digits (the runs: docs/levers.md, and docs/wgan_gp.md, "Departures from the paper").
- No BatchNorm in the critic: the penalty is a per-sample quantity and batch normalization
  makes each sample's score depend on the rest of the batch (section 4). The paper recommends
  layer normalization as a drop-in replacement; --critic_norm layer (the default) normalizes
  each sample over (C, H, W) with a per-channel scale and offset; --critic_norm none drops it.
- DCGAN-shaped networks (G: BatchNorm + ReLU, tanh; critic: strided convs, LeakyReLU 0.2),
  --hidden_dim 64 filters at the image end, doubling toward 4 x 4; images 32 x 32.
- Speed: --amp (a departure measured on the model's page) runs the networks' forward passes in bfloat16
  autocast and everything else in float32: the losses, and the penalty's gradient (taken with
  respect to the float32 x_hat) and its norm; --compile compiles G only, the critic stays eager
  (torch.compile does not support the double backward of the penalty); channels_last on the CPU,
  and on CUDA under --amp with cudnn.benchmark, unless --deterministic.

Samples (the grids, --generate, the latent walk, the quality figure) come from an exponential
moving average of G's weights (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498), not from G
itself: a departure from the paper that changes no training step (--ema 0 samples from G).
Its BatchNorm statistics are G's, copied: recomputed from its own samples (common.own_statistics,
as the other image scripts do) they scored worse here (docs/evaluate.md, sampling records).

Examples:
    python wgan_gp.py --data_root ./data                      # MNIST at 32 x 32
    python wgan_gp.py --epochs 100 --zdim 64 --lr 0.0002 --batch 128 --hidden_dim 64 \\
        --c_lambda 10 --critic_repeats 5                      # the earlier implementation's flags
    python wgan_gp.py --dataset cifar10 --image_size 32 --out runs/wgan_gp_cifar
"""

import argparse
import math

import torch
import torch.nn as nn

import common

SCRIPT = "wgan_gp.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim", "critic_norm")
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
        "wgan_gp",
        lr=2e-4,
        batch=64,
        hidden_dim=64,
        critic_repeats=5,
        zdim=100,
        epochs=25,
        lr_source="the authors' CIFAR-10 code's, without its decay; Algorithm 1 has 1e-4",
        logit=False,  # a critic's score has no fixed zero: no --augment_p ada
    )
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=32, help="images are resized to N x N (default 32)")
    p(
        "--c_lambda",
        type=common.nonnegative_float,
        default=10.0,
        help="gradient-penalty weight lambda (default 10, the paper's)",
    )
    p("--beta1", type=common.unit_interval, default=0.0, help="Adam beta1 (default 0, Algorithm 1)")
    p("--beta2", type=common.unit_interval, default=0.9, help="Adam beta2 (default 0.9, Algorithm 1)")
    p(
        "--critic_norm",
        choices=("layer", "none"),
        default="layer",
        help="normalization in the critic: layer norm or none, never BatchNorm (default layer)",
    )
    common.add_speed_flags(
        parser,
        compile_help="torch.compile G for the training steps; the critic stays eager, since the gradient "
        "penalty's double backward does not go through compiled graphs (default off)",
    )
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
    """Image -> (Conv 4x4 stride 2, [LayerNorm], LeakyReLU 0.2) ... -> 4 x 4 x 4h -> Conv 4x4 -> score."""

    def __init__(self, hidden_dim, image_size, channels, norm="layer"):
        super().__init__()
        w = widths(hidden_dim, image_size)[::-1]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(w, w[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1)]
            # GroupNorm with one group = layer norm over (C, H, W) of each sample on its own
            layers += [nn.GroupNorm(1, b)] if norm == "layer" else []
            layers += [nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(w[-1], 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).view(-1)


# ---------------------------------------------------------------------------------------------
# The gradient penalty and the two steps of Algorithm 1
# ---------------------------------------------------------------------------------------------


def gradient_penalty(critic, real, fake, c_lambda, eps=None):
    """lambda * mean_i (||grad f(x_hat_i)||_2 - 1)^2 with x_hat_i = eps_i x_i + (1 - eps_i) G(z_i).

    x_hat is float32 (made from float32 batches), so its gradient and the norm are float32 even
    when the critic itself runs under --amp's autocast."""
    if eps is None:
        eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return c_lambda * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_step(G, critic, opt_c, real, z, eps, c_lambda, augment):
    """One critic update: descend f(G(z)) - f(x) + penalty. Returns (loss, W estimate, penalty).

    The critic runs three times (real, fake, interpolates) and the penalty's input gradient is
    taken out of place (autograd.grad, create_graph=True): one backward of the whole loss then
    gives every parameter its gradient once, which is also what DistributedDataParallel needs to
    average it correctly under torchrun (a separate penalty.backward() would not be).

    With --augment the critic sees augmented images only, so the penalty holds it 1-Lipschitz
    where it is evaluated: on interpolates between the augmented real and fake batches."""
    with torch.no_grad():
        fake = augment(G(z))
    real = augment(real)
    wasserstein = critic(real).mean() - critic(fake).mean()
    penalty = gradient_penalty(critic, real, fake, c_lambda, eps)
    loss = -wasserstein + penalty
    opt_c.zero_grad(set_to_none=True)
    loss.backward()
    opt_c.step()
    return loss, wasserstein, penalty


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
    critic = Critic(args.hidden_dim, args.image_size, channels, args.critic_norm)
    G, critic = G.to(device, memory_format=memory_format), critic.to(device, memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    opt_c = torch.optim.Adam(critic.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
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
    # the critic is never compiled: torch.compile does not run the penalty's double backward
    fast_G, fast_critic = run.fast(G), run.fast(critic, compile=False)
    total = args.epochs * len(data) // args.critic_repeats
    run.start(data, total, grid=lambda: sample(G_ema, fixed_z), sample=lambda z: sample(G_ema, z))
    with run:
        while run.running():
            for _ in range(args.critic_repeats):  # z ~ N(0, I), eps ~ U[0, 1]: each process its own
                real = run.real_batch()
                z, eps = run.randn(len(real), args.zdim), run.rand(len(real), 1, 1, 1)
                loss_c, wasserstein, penalty = critic_step(
                    fast_G, fast_critic, opt_c, real, z, eps, args.c_lambda, run.augment
                )
            loss_g = generator_step(fast_G, fast_critic, opt_g, run.randn(data.batch, args.zdim), run.augment)
            common.ema_update(G_ema, G, args.ema, run.step)
            losses = dict(loss_c=loss_c, loss_g=loss_g, wasserstein=wasserstein, penalty=penalty)
            run.step_done(data.batch * args.critic_repeats, **losses)
    plots = [["loss_c", "loss_g"], ["wasserstein"], ["penalty"]]
    run.finish(plots, title=f"{SCRIPT} (lambda {args.c_lambda})")
    return G, critic


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
