"""SN-DCGAN: DCGAN whose discriminator is spectrally normalized.

Paper: Takeru Miyato, Toshiki Kataoka, Masanori Koyama, Yuichi Yoshida. "Spectral Normalization
for Generative Adversarial Networks", ICLR 2018. https://arxiv.org/abs/1802.05957

Every weight W of the discriminator D (each convolution and the final linear layer) is divided
by its largest singular value sigma(W), estimated by one step of power iteration per training
forward pass (u and v are carried from step to step):

    W_SN = W / sigma(W),    sigma(W) ~ u^T W v      (a conv weight is reshaped to out x (in*k*k))

so each reshaped weight has spectral norm 1 and D's Lipschitz constant is bounded without
clipping or a penalty (for a convolution the reshaped matrix's norm is the paper's proxy, not the
exact operator norm). No BatchNorm in D: the normalization is of the weights, not of the batch.
torch.nn.utils.parametrizations.spectral_norm does exactly this. The generator stays DCGAN.

Losses (--loss), D on logits:
    bce    loss_D = -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))    loss_G = -log sigmoid(D(G(z)))
    hinge  loss_D = max(0, 1 - D(x)) + max(0, 1 + D(G(z)))           loss_G = -D(G(z))
BCE (the non-saturating GAN loss) is the default, as the earlier SN-DCGAN implementation had;
the paper tests both and reports better scores with hinge.

Defaults, and where they come from:
- Adam lr 2e-4, betas (0.5, 0.999), one D step per G step (--critic_repeats 1), batch 64: the
  DCGAN settings, setting C of the paper's Table 1. Its setting A (lr 1e-4, betas (0.5, 0.9),
  5 D steps per G step) is --lr 0.0001 --beta2 0.9 --critic_repeats 5.
- DCGAN-shaped networks: G with BatchNorm + ReLU and tanh; D with strided 4x4 convs and
  LeakyReLU 0.2 (the paper's D uses 0.1 and extra 3x3 convs), --hidden_dim 64 filters at the
  image end, doubling toward 4 x 4; images 32 x 32.
- Speed: --amp (a departure measured on the model's page) runs G's and D's forward passes in bfloat16
  autocast and hands float32 outputs to the losses; inside D the power iteration and sigma turn
  autocast off and stay float32; --compile runs the steps through torch.compile'd copies of G and
  D (checkpoints hold the plain modules); channels_last on the CPU, and on CUDA under --amp
  with cudnn.benchmark, unless --deterministic.

Samples (the grids, --generate, the latent walk, the quality figure) come from an exponential
moving average of G's weights (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498), not from G
itself: a departure from the paper that changes no training step (--ema 0 samples from G).
Its BatchNorm statistics are recomputed from its own samples before each of these but the
grids during training (common.own_statistics).

Examples:
    python sn_dcgan.py --data_root ./data                     # MNIST at 32 x 32, BCE
    python sn_dcgan.py --loss hinge --out runs/sn_dcgan_hinge
    python sn_dcgan.py --dataset cifar10 --loss hinge --lr 0.0001 --beta2 0.9 --critic_repeats 5
"""

import argparse
import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "sn_dcgan.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim")
EPOCH_HELP = (
    "An epoch is one pass of the real data through the critic (the discriminator: each of its updates "
    "draws a fresh real batch); G is updated once per --critic_repeats critic updates, counted across "
    "epoch boundaries."
)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + EPOCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_flags(
        parser, "sn_dcgan", lr=2e-4, batch=64, hidden_dim=64, critic_repeats=1, zdim=100, epochs=25
    )
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=32, help="images are resized to N x N (default 32)")
    p("--loss", choices=("bce", "hinge"), default="bce", help="GAN loss (default bce; hinge as the paper)")
    p("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (default 0.5)")
    p("--beta2", type=common.unit_interval, default=0.999, help="Adam beta2 (default 0.999)")
    common.add_speed_flags(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Networks: DCGAN generator, spectrally normalized discriminator
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


def _float32_normalize(self, weight):
    with torch.autocast(weight.device.type, enabled=False):
        return type(self).forward(self, weight)


def spectral_norm(layer):
    """torch's spectral_norm, its power iteration and sigma run with autocast off: under --amp (D's
    forward inside autocast) they stay float32 (CUDA's autocast would compute W v in bfloat16 and
    mix dtypes in u^T W v). Bound to the parametrization itself, so a deepcopy of D gets its own
    power iteration."""
    layer = nn.utils.parametrizations.spectral_norm(layer)
    sn = layer.parametrizations.weight[0]
    sn.forward = types.MethodType(_float32_normalize, sn)
    return layer


class Discriminator(nn.Module):
    """Image -> (SN Conv 4x4 stride 2, LeakyReLU 0.2) ... -> 4 x 4 x 4h -> SN Linear -> logit. No BN."""

    def __init__(self, hidden_dim, image_size, channels):
        super().__init__()
        sn = spectral_norm
        w = widths(hidden_dim, image_size)[::-1]
        layers = [sn(nn.Conv2d(channels, w[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for a, b in zip(w, w[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        layers += [nn.Flatten(), sn(nn.Linear(w[-1] * 4 * 4, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).view(-1)


# ---------------------------------------------------------------------------------------------
# The losses and the two steps
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits, kind):
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()  # BCE on logits


def generator_loss(fake_logits, kind):
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()  # -log sigmoid(D(G(z))), the non-saturating loss


def d_step(G, D, opt_d, real, z, kind, augment):
    """One D update on a real and a detached fake batch; the power iteration advances in D's forward.
    augment: --augment (and with --augment_p ada, D's logits on the real batch set its strength)."""
    with torch.no_grad():
        fake = G(z)
    real_logits = D(augment(real))
    augment.observe(real_logits)
    loss = discriminator_loss(real_logits, D(augment(fake)), kind)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, z, kind, augment):
    """One G update through D; D's weights are frozen, not stepped."""
    D.requires_grad_(False)
    loss = generator_loss(D(augment(G(z))), kind)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    return loss


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build(args, channels, device, memory_format=torch.contiguous_format):
    G = Generator(args.zdim, args.hidden_dim, args.image_size, channels)
    D = Discriminator(args.hidden_dim, args.image_size, channels)
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2))
    return G, D, opt_g, opt_d


@torch.no_grad()
def sample(G, z):
    G.eval()
    images = torch.cat([G(chunk) for chunk in z.split(512)])
    G.train()
    return images


def train(args):
    run = common.Run(args, SCRIPT, SHAPE_FLAGS)
    if args.generate:
        G = build(args, run.channels, run.device)[0]
        run.track(G_ema=G)  # samples come from G's average
        return run.generate(lambda z: sample(G, z), args.zdim)
    data = common.make_batches(args, run.device)
    G, D, opt_g, opt_d = build(args, data.channels, run.device, run.memory_format)
    fixed_z = torch.randn(64, args.zdim, device=run.device)
    G_ema = common.average_of(G)  # what the grids, --generate and the quality figure sample
    run.track(G=G, D=D, opt_g=opt_g, opt_d=opt_d, G_ema=G_ema, fixed_z=fixed_z)
    fast_G, fast_D = run.fast(G), run.fast(D)
    total = args.epochs * len(data) // args.critic_repeats
    run.start(data, total, grid=lambda: sample(G_ema, fixed_z), sample=lambda z: sample(G_ema, z))
    with run:
        while run.running():
            for _ in range(args.critic_repeats):  # z ~ N(0, I): run.randn gives each process its own
                real = run.real_batch()
                z = run.randn(len(real), args.zdim)
                loss_d = d_step(fast_G, fast_D, opt_d, real, z, args.loss, run.augment)
            loss_g = g_step(fast_G, fast_D, opt_g, run.randn(data.batch, args.zdim), args.loss, run.augment)
            common.ema_update(G_ema, G, args.ema, run.step)
            run.step_done(data.batch * args.critic_repeats, loss_d=loss_d, loss_g=loss_g)
    run.finish([["loss_d", "loss_g"]], title=f"{SCRIPT} ({args.loss} loss)")
    return G, D


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
