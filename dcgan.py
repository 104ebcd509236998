"""DCGAN: the all-convolutional GAN of Radford, Metz and Chintala.

Paper: Alec Radford, Luke Metz, Soumith Chintala. "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016. https://arxiv.org/abs/1511.06434

The architecture guidelines of section 3, as the networks below build them:
- G projects z (100 numbers from N(0, I), as the authors' Torch code draws them; the paper's
  figure 1 draws z uniform: a departure, not measured) to a 4 x 4 map with a transposed
  convolution, then transposed convolutions of kernel 4, stride 2, padding 1 halve the channels
  and double the size up to --image_size; BatchNorm and ReLU after every layer but the output,
  which is tanh.
- D mirrors it: strided convolutions (no pooling), LeakyReLU 0.2, BatchNorm after every layer but
  the first, no fully connected layer; a last 4 x 4 convolution gives one logit.
- --hidden_dim h is the width of G's last and D's first hidden layer; widths double toward 4 x 4:
  at 64 px G is 8h-4h-2h-h, so h = 128 is the paper's 1024-512-256-128 generator (figure 1).
- Weights from N(0, 0.02); BatchNorm gains from N(1, 0.02), offsets 0.
- A departure, from measurement: every image D sees, real and generated, in both steps, is shifted
  by up to 1/8 of its side with probability 1/4 (--augment translation --augment_p 0.25; DiffAugment,
  Zhao et al. 2020, arXiv:2006.10738; --augment none is the paper's D). Figures in docs/dcgan.md.

The game is the original GAN's, on logits (BCE with logits), with the non-saturating G loss:

    loss_D = -log D(x) - log(1 - D(G(z)))      real and fake batches in separate passes through D,
                                               so BatchNorm normalizes each on its own statistics
    loss_G = -log D(G(z))

Defaults, and where they come from: Adam lr 2e-4, beta1 0.5 (beta2 0.999), batch 128, z of size
100 (all section 4); images scaled to [-1, 1]; 32 x 32 for MNIST, Fashion-MNIST and CIFAR-10 and
64 x 64 for CelebA (aligned faces, resized and center-cropped) and image folders. The paper's nets
are 64 x 64 with h = 128: 32 x 32 and h = 64 are a departure for the cost of a step, not measured
(--image_size 64 --hidden_dim 128 builds the paper's network).

--arch linear is the variant an earlier implementation called linDCGAN: D is four convolutions
(at 32 px: a 3 x 3 one at full size, then three strided ones down to 4 x 4) and a linear layer
to the logit; G projects z with a linear layer to 4 x 4, then transposed convolutions up to full
size and a final 3 x 3 convolution to the image. Not the paper's network; kept for comparison.

Speed, set up once in train() so that the step functions stay plain float32 code: --amp (a
departure measured on docs/dcgan.md) runs the forward passes of G and D in bfloat16 autocast and
hands their outputs back in float32, so the losses are float32; --compile runs the steps through
torch.compile'd copies of G and D (checkpoints hold the plain modules); channels_last on the CPU,
and on CUDA under --amp with cudnn.benchmark, unless --deterministic.

Samples (the grids, --generate, the latent walk, the quality figure) come from an exponential
moving average of G's weights (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498), not from G
itself: a departure from the paper that changes no training step (--ema 0 samples from G).
Its BatchNorm statistics are recomputed from its own samples before each of these but the
grids during training (common.own_statistics).

Examples:
    python dcgan.py --data_root ./data --epochs 5                     # MNIST, 32 x 32
    python dcgan.py --dataset celeba --data_root ./data --hidden_dim 128 --out runs/dcgan_celeba
    python dcgan.py --dataset cifar10 --arch linear --out runs/dcgan_cifar_linear
    python dcgan.py --resume runs/dcgan/checkpoint.pt --generate 10000     # PNGs for FID
    python dcgan.py --device cuda --amp --compile --batch 128                # fastest on a GPU
"""

import argparse
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "dcgan.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim", "arch")
# D's inputs, real and generated, shifted with probability 1/4 each: see the departure above
AUGMENT = ("translation", 0.25, "a quarter of D's images shifted, measured in docs/dcgan.md")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_flags(
        parser,
        "dcgan",
        lr=2e-4,
        batch=128,
        hidden_dim=64,
        critic_repeats=1,
        zdim=100,
        epochs=25,
        augment=AUGMENT,
    )
    p = parser.add_argument
    p(
        "--image_size",
        type=common.positive_int,
        default=None,
        help="images are resized to N x N, a power of two >= 16 (default 32; 64 for celeba and folder)",
    )
    p(
        "--arch",
        choices=("conv", "linear"),
        default="conv",
        help="conv: the paper's networks; linear: linDCGAN (default conv)",
    )
    p("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (default 0.5, the paper's)")
    common.add_speed_flags(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


def widths(hidden_dim, image_size):
    """Channels from the 4 x 4 end to the image end: 32 px [4h, 2h, h], 64 px [8h, 4h, 2h, h]."""
    return [hidden_dim * 2**i for i in reversed(range(int(math.log2(image_size)) - 2))]


def init_weights(module):
    """Section 4: all weights from N(0, 0.02); BatchNorm gain N(1, 0.02) and offset 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def up(a, b):
    """Transposed conv 4x4 stride 2 (doubles the size), BatchNorm, ReLU. No bias: BN has one."""
    return [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]


def down(a, b):
    """Conv 4x4 stride 2 (halves the size), BatchNorm, LeakyReLU 0.2."""
    return [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]


class Generator(nn.Module):
    """conv:   z -> ConvT 4x4 to 4 x 4 x w0, BN, ReLU -> up(w0, w1) ... -> ConvT to C x S x S -> tanh
    linear: z -> Linear to 4 x 4 x w0, BN, ReLU -> up(w0, w1) ... up(h, h) -> Conv 3x3 to C -> tanh"""

    def __init__(self, zdim, hidden_dim, image_size, channels, arch="conv"):
        super().__init__()
        self.image_shape = (channels, image_size, image_size)
        w = widths(hidden_dim, image_size)
        if arch == "conv":
            layers = [nn.Unflatten(1, (zdim, 1, 1)), nn.ConvTranspose2d(zdim, w[0], 4, 1, 0, bias=False)]
            layers += [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
            for a, b in zip(w, w[1:]):
                layers += up(a, b)
            layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        else:
            layers = [nn.Linear(zdim, w[0] * 16, bias=False), nn.BatchNorm1d(w[0] * 16), nn.ReLU(True)]
            layers += [nn.Unflatten(1, (w[0], 4, 4))]
            for a, b in zip(w, w[1:] + w[-1:]):
                layers += up(a, b)
            layers += [nn.Conv2d(w[-1], channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z):
        return self.net(z.flatten(1))


class Discriminator(nn.Module):
    """conv:   x -> Conv 4x4 s2 to h, LeakyReLU (no BN) -> down(h, 2h) ... -> 4 x 4 -> Conv 4x4 -> logit
    linear: x -> Conv 3x3 to h, LeakyReLU (no BN) -> down(h, h) ... -> 4 x 4 -> Linear -> logit"""

    def __init__(self, hidden_dim, image_size, channels, arch="conv"):
        super().__init__()
        w = widths(hidden_dim, image_size)[::-1]
        if arch == "conv":
            layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
            for a, b in zip(w, w[1:]):
                layers += down(a, b)
            layers += [nn.Conv2d(w[-1], 1, 4, 1, 0)]
        else:
            layers = [nn.Conv2d(channels, w[0], 3, 1, 1), nn.LeakyReLU(0.2, True)]
            for a, b in zip(w[:1] + w, w):
                layers += down(a, b)
            layers += [nn.Flatten(), nn.Linear(w[-1] * 16, 1)]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x):
        return self.net(x).view(-1)


# ---------------------------------------------------------------------------------------------
# The losses and the two alternating steps
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits):
    """BCE(D(x), 1) + BCE(D(G(z)), 0) = -log D(x) - log(1 - D(G(z)))."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits):
    """The non-saturating loss BCE(D(G(z)), 1) = -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_step(G, D, opt_d, real, z, augment):
    """Update D on a real batch and a fake one, each through D on its own (own BN statistics);
    augment (--augment) transforms both alike, or returns them as they are. With --augment_p ada
    it reads D's logits on the real batch to set how often it transforms."""
    with torch.no_grad():
        fake = G(z)
    real_logits = D(augment(real))
    augment.observe(real_logits)
    loss = discriminator_loss(real_logits, D(augment(fake)))
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def generator_step(G, D, opt_g, z, augment):
    """Update G through D (and through augment); D's weights are frozen for this pass, so only G's
    gradients are computed."""
    D.requires_grad_(False)
    loss = generator_loss(D(augment(G(z))))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    return loss


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build(args, channels, device, memory_format=torch.contiguous_format):
    G = Generator(args.zdim, args.hidden_dim, args.image_size, channels, args.arch)
    D = Discriminator(args.hidden_dim, args.image_size, channels, args.arch)
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
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
    about = f"{args.dataset} at {args.image_size} px, {len(data)} batches of {data.batch} per epoch"
    total = args.epochs * len(data) // args.critic_repeats
    draw = partial(sample, G_ema)
    run.start(data, total, grid=lambda: draw(fixed_z), about=about, sample=draw)
    with run:
        while run.running():
            for _ in range(args.critic_repeats):  # z ~ N(0, I): run.randn gives each process its own
                real = run.real_batch()
                z = run.randn(len(real), args.zdim)
                loss_d = discriminator_step(fast_G, fast_D, opt_d, real, z, run.augment)
            loss_g = generator_step(fast_G, fast_D, opt_g, run.randn(data.batch, args.zdim), run.augment)
            common.ema_update(G_ema, G, args.ema, run.step)
            run.step_done(data.batch * args.critic_repeats, loss_d=loss_d, loss_g=loss_g)
    title = f"{SCRIPT} ({args.arch}, {args.image_size} px)"
    run.finish([["loss_d", "loss_g"]], title=title)
    return G, D


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.image_size is None:
        args.image_size = 64 if args.dataset in ("celeba", "folder") else 32
    if args.resume is None:  # a resumed run has the checkpoint's size; train() refuses another
        common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
