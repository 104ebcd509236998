"""The MLP GAN of Goodfellow et al. on MNIST.

Paper: Ian J. Goodfellow, Jean Pouget-Abadie, Mehdi Mirza, Bing Xu, David Warde-Farley, Sherjil Ozair,
Aaron Courville, Yoshua Bengio. "Generative Adversarial Nets", NeurIPS 2014.
https://arxiv.org/abs/1406.2661

A generator G (a multilayer perceptron from noise z to a flattened image) and a discriminator D
(a multilayer perceptron from an image to one logit) play the minimax game

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]

D ascends it: loss_D = -log D(x) - log(1 - D(G(z))), computed on logits (BCE with logits).
G has two choices (--g_loss):
    minimax        loss_G =  log(1 - D(G(z)))   the game as written; its gradient vanishes while
                                                 D easily rejects the samples, i.e. early on
    nonsaturating  loss_G = -log D(G(z))        what the paper recommends (section 3), the default

Defaults, and where they come from:
- z ~ N(0, I) of size 100; G 256-512-1024 and D 1024-512-256 (--hidden_dim 256 times 1, 2, 4),
  LeakyReLU 0.2, dropout 0.5 after D's hidden layers and 0.2 on D's input pixels (the paper trains
  D with dropout; its code, mnist.yaml, keeps each hidden unit with probability 0.5 and each input
  pixel with probability 0.8), tanh output on images
  scaled to [-1, 1]. BatchNorm after G's hidden layers (Radford et al. 2015; the paper predates
  BatchNorm, --no-g_batchnorm gives its plain MLP): on 4,000 real digits, 50 epochs without it
  gave mostly 1s, 7s and 9s in speckle, with it all ten digits (docs/gan_mnist.md). The paper's own nets
  (maxout D, 1200-unit G, SGD with momentum) are not reproduced; these widths train in minutes.
- Adam, lr 2e-4, betas (0.5, 0.999), batch 64: Radford et al. 2015 showed these stabilise GAN
  training; the paper itself used SGD with momentum. One D step per G step (k = 1, as the
  paper's experiments).
- A departure, from measurement: every image D sees, real and generated, in both steps, is shifted
  by up to 4 pixels with probability 1/4 (--augment translation --augment_p 0.25; DiffAugment,
  Zhao et al. 2020, arXiv:2006.10738; --augment none is the paper's D). Without it this D learns
  the training digits by heart: on 4,000 digits held-out FID got worse from 15 to 30 CPU minutes
  in three runs (two seeds, and ADA, whose p stayed near 0); with it, it kept improving (two
  seeds), and on 400 digits it was ahead at 8 minutes and far ahead at 30. At 8 minutes on the
  4,000 it is level with none.
- Speed: --amp (a departure measured on the model's page) runs the forward passes of G and D
  in bfloat16 autocast and hands back float32, so the losses are float32; --compile runs the steps through
  torch.compile'd copies of G and D (checkpoints hold the plain modules); both are set up once
  in train() (common.Run.fast), so the step functions below are plain float32 maths;
  --deterministic asks CUDA for repeatable kernels (an MLP: no cudnn.benchmark, no channels_last).

Samples (the grids, --generate, the latent walk, the quality figure) come from an exponential
moving average of G's weights (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498), not from G
itself: a departure from the paper that changes no training step (--ema 0 samples from G).
Its BatchNorm statistics are recomputed from its own samples before each of these but the
grids during training (common.own_statistics).

The three set-ups this collection grew from, with flags alone:
    python gan_mnist.py --zdim 64 --lr 0.00001 --batch 128 --hidden_dim 128 --epochs 200 \\
        --d_input_dropout 0 --augment none
    python gan_mnist.py --digit 0 --zdim 64 --g_widths 128,512 --d_widths 256 --lr 0.001 --lr_d 0.05 \\
        --d_dropout 0 --d_input_dropout 0 --no-g_batchnorm --augment none
    python gan_mnist.py --epochs 50        # the tutorial: progress.gif and interpolation.png
Compare the generator losses:
    python gan_mnist.py --g_loss minimax --out runs/gan_mnist_minimax
"""

import argparse
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "gan_mnist.py"
LABELLED = ("mnist", "fashion-mnist", "cifar10")
# D's inputs, real and generated, shifted by up to 4 pixels with probability 1/4 each (DiffAugment's
# translation, Zhao et al. 2020, on a quarter of the images): see "Defaults" above
AUGMENT = ("translation", 0.25, "a quarter of D's images shifted, measured in docs/gan_mnist.md")
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim", "g_widths", "d_widths", "g_batchnorm")


def width_list(text):
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of widths, e.g. 128,512"
        ) from None
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive")
    return widths


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_flags(
        parser,
        "gan_mnist",
        lr=2e-4,
        batch=64,
        hidden_dim=256,
        critic_repeats=1,
        zdim=100,
        epochs=50,
        lr_source="Radford et al. 2015; the paper used SGD with momentum",
        augment=AUGMENT,
    )
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=28, help="images are resized to N x N (default 28)")
    p("--digit", type=int, choices=range(10), default=None, help="train on this class only (default: all)")
    p(
        "--g_loss",
        choices=("nonsaturating", "minimax"),
        default="nonsaturating",
        help="G's objective (default nonsaturating)",
    )
    p("--lr_d", type=common.positive_float, default=None, help="D's learning rate (default: same as --lr)")
    p("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (default 0.5, Radford et al.)")
    p("--g_widths", type=width_list, default=None, help="G's hidden widths, e.g. 128,512 (default H,2H,4H)")
    p("--d_widths", type=width_list, default=None, help="D's hidden widths, e.g. 256 (default 4H,2H,H)")
    p("--d_dropout", type=common.unit_interval, default=0.5, help="D's hidden-layer dropout (default 0.5)")
    p(
        "--d_input_dropout",
        type=common.unit_interval,
        default=0.2,
        help="dropout on D's input pixels (default 0.2: the authors' code keeps each with probability 0.8)",
    )
    p(
        "--g_batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="BatchNorm after G's hidden layers (default on; --no-g_batchnorm: the paper's plain MLP)",
    )
    common.add_speed_flags(parser)
    parser.before_flag = dict(d_input_dropout=0.0)  # a checkpoint made before the flag resumes without it
    return parser


# ---------------------------------------------------------------------------------------------
# Networks: two multilayer perceptrons
# ---------------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z -> hidden layers (Linear, [BatchNorm], LeakyReLU 0.2) -> Linear -> tanh, reshaped to an image."""

    def __init__(self, zdim, widths, image_shape, batchnorm=False):
        super().__init__()
        self.image_shape = image_shape
        layers, width_in = [], zdim
        for width in widths:
            layers += [nn.Linear(width_in, width)]
            layers += [nn.BatchNorm1d(width)] if batchnorm else []
            layers += [nn.LeakyReLU(0.2)]
            width_in = width
        layers += [nn.Linear(width_in, image_shape.numel()), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z).view(-1, *self.image_shape)


class Discriminator(nn.Module):
    """Image -> dropout on pixels -> hidden layers (Linear, LeakyReLU 0.2, dropout) -> one logit.

    No sigmoid: the losses take logits (BCE with logits)."""

    def __init__(self, image_shape, widths, dropout, input_dropout=0.0):
        super().__init__()
        self.input_dropout = nn.Dropout(input_dropout)  # no weights: checkpoints keep their keys
        layers, width_in = [nn.Flatten()], image_shape.numel()
        for width in widths:
            layers += [nn.Linear(width_in, width), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width_in = width
        layers += [nn.Linear(width_in, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(self.input_dropout(x)).view(-1)


# ---------------------------------------------------------------------------------------------
# The losses and the two steps of Algorithm 1
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits):
    """-log D(x) - log(1 - D(G(z))), with log sigmoid computed from logits."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits, kind):
    if kind == "minimax":
        return -F.softplus(fake_logits).mean()  # log(1 - D(G(z))) = -softplus(logit)
    return F.softplus(-fake_logits).mean()  # -log D(G(z))


def d_step(G, D, opt_d, real, z, augment):
    """Ascend D's objective; the fake batch is made without a graph, so no gradient reaches G.
    augment: --augment (and with --augment_p ada, D's logits on the real batch set its strength)."""
    with torch.no_grad():
        fake = G(z)
    real_logits = D(augment(real))
    augment.observe(real_logits)
    loss = discriminator_loss(real_logits, D(augment(fake)))
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, z, kind, augment):
    """Descend G's objective through D, D frozen: the gradient flows through D to G, and D's weights
    get none (under torchrun none is computed and sent, only to be thrown away)."""
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


def build(args, channels, device):
    shape = torch.Size((channels, args.image_size, args.image_size))
    h = args.hidden_dim
    G = Generator(args.zdim, args.g_widths or [h, 2 * h, 4 * h], shape, args.g_batchnorm).to(device)
    D = Discriminator(shape, args.d_widths or [4 * h, 2 * h, h], args.d_dropout, args.d_input_dropout)
    D = D.to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d or args.lr, betas=(args.beta1, 0.999))
    return G, D, opt_g, opt_d


@torch.no_grad()
def sample(G, z):
    G.eval()
    images = torch.cat([G(chunk) for chunk in z.split(512)])
    G.train()
    return images


def train(args):
    run = common.Run(args, SCRIPT, SHAPE_FLAGS, conv=False)
    if args.generate:
        G = build(args, run.channels, run.device)[0]
        run.track(G_ema=G)  # samples come from G's average
        return run.generate(lambda z: sample(G, z), args.zdim)
    digits = None if args.digit is None else [args.digit]
    data = common.make_batches(args, run.device, digits)
    G, D, opt_g, opt_d = build(args, data.channels, run.device)
    fixed_z = torch.randn(64, args.zdim, device=run.device)
    G_ema = common.average_of(G)  # what the grids, --generate and the quality figure sample
    run.track(G=G, D=D, opt_g=opt_g, opt_d=opt_d, G_ema=G_ema, fixed_z=fixed_z)
    fast_G, fast_D = run.fast(G), run.fast(D)
    total = args.epochs * len(data) // args.critic_repeats
    draw = partial(sample, G_ema)
    run.start(data, total, grid=lambda: draw(fixed_z), sample=draw, classes=digits)
    with run:
        while run.running():
            for _ in range(args.critic_repeats):  # z ~ N(0, I): run.randn gives each process its own
                real = run.real_batch()
                loss_d = d_step(fast_G, fast_D, opt_d, real, run.randn(len(real), args.zdim), run.augment)
            z = run.randn(data.batch, args.zdim)
            loss_g = g_step(fast_G, fast_D, opt_g, z, args.g_loss, run.augment)
            common.ema_update(G_ema, G, args.ema, run.step)
            run.step_done(data.batch * args.critic_repeats, loss_d=loss_d, loss_g=loss_g)
    run.finish([["loss_d", "loss_g"]], title=f"{SCRIPT} ({args.g_loss} G loss)")
    return G, D


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.digit is not None and args.dataset not in LABELLED:
        common.fail(f"--digit needs a labelled dataset ({', '.join(LABELLED)}), not {args.dataset}")
    return train(args)


if __name__ == "__main__":
    main()
