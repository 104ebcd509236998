"""Class-wise DCGAN: one independent generator/discriminator pair per class of a labelled dataset.

Networks and training: Alec Radford, Luke Metz, Soumith Chintala. "Unsupervised Representation
Learning with Deep Convolutional Generative Adversarial Networks", ICLR 2016.
https://arxiv.org/abs/1511.06434. The networks are DCGAN's, written out below as in dcgan.py
(--arch linear: linDCGAN, a linear layer from z to G's 4 x 4 map and from D's 4 x 4 map to the logit).

An earlier implementation this collection grew from (classDCGAN) trained CIFAR-10 with ten DCGAN
pairs, one per class, each making its own GIF. This file does that for CIFAR-10, MNIST and
Fashion-MNIST. Pair c plays DCGAN's game on the images of class c alone:

    loss_D_c = -log D_c(x) - log(1 - D_c(G_c(z)))      x drawn from class c only
    loss_G_c = -log D_c(G_c(z))                          (non-saturating, BCE on logits)

The pairs share nothing but the code: no parameter, optimizer, batch or random number. Each has its own
initialisation and its own noise generator, seeded from (--seed, class), so pair c trains the same alone
(--classes 3) or beside nine others; the generators live on the CPU, so a checkpoint resumes on any device.

A step updates every pair once (--critic_repeats D updates, then one G update); an epoch is one pass of D
over the largest chosen class, and a smaller class starts its next pass early. Defaults: DCGAN's (Adam lr
2e-4, beta1 0.5, z of size 100, --hidden_dim 64, 32 x 32), but 64 images per pair and step, not 128
(--batch 128 gives DCGAN's): the pairs step one after the other, each on a tenth of the data, and at 64
each makes twice the steps in the same time (the runs that decided it: docs/dcgan_classwise.md,
"Departures from the paper").
Speed, same maths: --amp (bfloat16 autocast), --compile; channels_last on the CPU, and on
CUDA under --amp with cudnn.benchmark. Samples (grids, --generate, latent walks, the quality figure)
come from a moving average of each pair's G (--ema 0.999, Yazici et al. 2019, arXiv:1806.04498): not
the paper's, and no training step changes (--ema 0: each G itself). Each average's BatchNorm
statistics are recomputed from its own samples before each of these but the grids during
training (common.own_statistics).

Run folder:
    OUT/checkpoint.pt           what --resume takes: flags, step, and for each class i G_i, G_ema_i,
                                D_i, opt_g_i, opt_d_i, fixed_z_i, noise_i (its CPU generator)
    OUT/class_<i>_<name>/       each pair's samples/, progress.gif, losses.png, interpolation.png, generated/
    OUT/samples/epoch_XXXX.png  one row per class; OUT/progress.gif animates them
    OUT/log.csv, OUT/losses.png loss_d_<i> and loss_g_<i> for every class

Examples:
    python dcgan_classwise.py --data_root ./data --epochs 10                  # ten MNIST digits
    python dcgan_classwise.py --dataset cifar10 --classes 0,1 --out runs/planes_and_cars
    python dcgan_classwise.py --resume runs/dcgan_classwise/checkpoint.pt --generate 1000
"""

import argparse
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "dcgan_classwise.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim", "arch", "classes")
LABELLED = ("mnist", "fashion-mnist", "cifar10")


def class_list(text):
    if not all(c.strip().isdigit() and int(c) <= 9 for c in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of classes 0 to 9, e.g. 0,3")
    return sorted({int(c) for c in text.split(",")})


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dcgan = dict(lr=2e-4, hidden_dim=64, critic_repeats=1)  # DCGAN's defaults
    common.add_common_flags(parser, "dcgan_classwise", **dcgan, batch=64, datasets=LABELLED)
    actions = parser._option_string_actions  # two common flags that mean "per pair" here
    actions["--batch"].help = (
        "batch size of each pair, per process (default 64; DCGAN's 128 is over every class); under "
        "torchrun N processes train each pair on N x batch images per step, at the same --lr"
    )
    per_class = "with --resume: write N samples per class to OUT/class_<i>_<name>/generated/ (default: off)"
    actions["--generate"].help = per_class
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=32, help="images are resized to N x N (default 32)")
    p("--classes", type=class_list, default=[*range(10)], help="classes to train, e.g. 0,3 (default all)")
    p("--arch", choices=("conv", "linear"), default="conv", help="paper's nets or linDCGAN (default conv)")
    p("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (default 0.5, the paper's)")
    common.add_speed_flags(parser)
    return parser


# -- DCGAN's networks (section 3 of the paper), and linDCGAN's -------------------------------------
def widths(hidden_dim, image_size):
    """Channels from the 4 x 4 end to the image end: 32 px [4h, 2h, h], 64 px [8h, 4h, 2h, h]."""
    return [hidden_dim * 2**i for i in reversed(range(int(math.log2(image_size)) - 2))]


def init_weights(m):
    """Section 4: all weights from N(0, 0.02); BatchNorm gain N(1, 0.02) and offset 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def ups(w):
    """w[0] -> w[1] -> ...: each a transposed conv 4x4 stride 2 (doubles the size), BatchNorm, ReLU."""
    layers = []
    for a, b in zip(w, w[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
    return layers


def downs(w):
    """w[0] -> w[1] -> ...: each a conv 4x4 stride 2 (halves the size), BatchNorm, LeakyReLU 0.2."""
    layers = []
    for a, b in zip(w, w[1:]):
        layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
    return layers


class Generator(nn.Module):
    """conv:   z -> ConvT 4x4 to 4 x 4 x w0, BN, ReLU -> ups(w0, w1, ... h) -> ConvT to C x S x S -> tanh
    linear: z -> Linear to 4 x 4 x w0, BN, ReLU -> ups(w0, w1, ... h, h) -> Conv 3x3 to C -> tanh"""

    def __init__(self, zdim, hidden_dim, image_size, channels, arch="conv"):
        super().__init__()
        w = widths(hidden_dim, image_size)
        if arch == "conv":
            layers = [nn.Unflatten(1, (zdim, 1, 1)), nn.ConvTranspose2d(zdim, w[0], 4, 1, 0, bias=False)]
            layers += [nn.BatchNorm2d(w[0]), nn.ReLU(True), *ups(w)]
            layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        else:
            layers = [nn.Linear(zdim, w[0] * 16, bias=False), nn.BatchNorm1d(w[0] * 16), nn.ReLU(True)]
            layers += [nn.Unflatten(1, (w[0], 4, 4)), *ups(w + w[-1:])]
            layers += [nn.Conv2d(w[-1], channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z):
        return self.net(z.flatten(1))


class Discriminator(nn.Module):
    """conv:   x -> Conv 4x4 s2 to h, LeakyReLU (no BN) -> downs(h, 2h, ...) to 4 x 4 -> Conv 4x4 -> logit
    linear: x -> Conv 3x3 to h, LeakyReLU (no BN) -> downs(h, h, 2h, ...) to 4 x 4 -> Linear -> logit"""

    def __init__(self, hidden_dim, image_size, channels, arch="conv"):
        super().__init__()
        w = widths(hidden_dim, image_size)[::-1]
        if arch == "conv":
            layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True), *downs(w)]
            layers += [nn.Conv2d(w[-1], 1, 4, 1, 0)]
        else:
            layers = [nn.Conv2d(channels, w[0], 3, 1, 1), nn.LeakyReLU(0.2, True), *downs(w[:1] + w)]
            layers += [nn.Flatten(), nn.Linear(w[-1] * 16, 1)]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x):
        return self.net(x).view(-1)


# -- DCGAN's losses and its two alternating steps --------------------------------------------------
def discriminator_loss(real_logits, fake_logits):
    """BCE(D(x), 1) + BCE(D(G(z)), 0) = -log D(x) - log(1 - D(G(z)))."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits):
    """The non-saturating loss BCE(D(G(z)), 1) = -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def d_step(G, D, opt_d, real, z, augment):
    """Update D on a real batch and a fake one, each through D on its own (own BN statistics).
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


def g_step(G, D, opt_g, z, augment):
    """Update G through D; D's weights are frozen for this pass, so only G's gradients are computed."""
    D.requires_grad_(False)
    loss = generator_loss(D(augment(G(z))))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    return loss


# -- One pair per class, and the run around them ---------------------------------------------------
class Pair:
    """Class c's DCGAN: G and D, their optimizers, its own noise, and its images and place in them."""

    def __init__(self, run, c, channels, images=None):
        args, self.c, self.run = run.args, c, run
        self.name = f"class_{c}_{common.CLASS_NAMES[args.dataset][c]}"
        if images is not None and len(images) == 0:
            common.fail(f"--classes: {args.dataset} in {args.data_root} has no images of class {c}")
        with torch.random.fork_rng(devices=[]):  # the CPU generator is left as it was, the GPU's untouched
            torch.random.default_generator.manual_seed(args.seed * 1000 + c)
            G = Generator(args.zdim, args.hidden_dim, args.image_size, channels, args.arch)
            D = Discriminator(args.hidden_dim, args.image_size, channels, args.arch)
        self.G, self.D = (net.to(run.device, memory_format=run.memory_format) for net in (G, D))
        self.G_ema = common.average_of(self.G)  # what this pair's grids and samples come from
        self.fast_G, self.fast_D = run.fast(self.G), run.fast(self.D)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        self.zdim, self.noise = args.zdim, torch.Generator().manual_seed(args.seed * 1000 + c)
        self.fixed_z = torch.randn(64, args.zdim, generator=self.noise).to(run.device)  # alike everywhere
        self.augment = run.augmentation(f"augment_{c}")  # each D its own ada strength (--augment_p ada)
        if images is not None:  # training (not --generate): read on from the run's count of batches
            self.data = common.TensorBatches(images, args.batch, run.device, args.seed)
            self.reader = common.BatchReader(self.data, run.batches_done, run.memory_format)

    def things(self):
        """What the run's checkpoint holds of this pair, each name ending in its class."""
        names = ("G", "G_ema", "D", "opt_g", "opt_d", "noise", "fixed_z")
        return {f"{name}_{self.c}": getattr(self, name) for name in names}

    def z(self, n):
        """n latent vectors from the pair's own noise (under torchrun, this process's share)."""
        return self.run.randn(n, self.zdim, generator=self.noise)


@torch.no_grad()
def sample(G, z):
    G.eval()
    images = torch.cat([G(chunk) for chunk in z.split(512)])
    G.train()
    return images


def grids(pairs):
    """Each pair's 64 fixed-noise samples in its folder, and 8 of each as a row of OUT/samples/."""
    images = {p.name: sample(p.G_ema, p.fixed_z) for p in pairs}
    return {**images, "": torch.cat([x[:8] for x in images.values()])}


def pooled(pairs, z):
    """An equal share of z through each pair's G: the quality figure measures the pairs together."""
    return torch.cat([sample(p.G_ema, part) for p, part in zip(pairs, z.chunk(len(pairs)))])


def train(args):
    run = common.Run(args, SCRIPT, SHAPE_FLAGS)
    if args.generate:  # each class's PNGs in its own folder, from its own seed
        for p in [Pair(run, c, run.channels) for c in args.classes]:
            run.track(**{f"G_ema_{p.c}": p.G})  # samples come from the pair's average
            folder = run.out / p.name / "generated"
            run.generate(partial(sample, p.G), args.zdim, folder, args.seed + p.c, nets=[p.G])
        return None
    images, labels = common.training_images(args, args.classes)  # --train_images: drawn from every class
    pairs = [Pair(run, c, images.shape[1], images[labels == c]) for c in args.classes]
    run.track(**{name: thing for p in pairs for name, thing in p.things().items()})
    data = max((p.data for p in pairs), key=len)  # the run's epoch: one pass over the largest class
    about = f"{args.dataset} at {args.image_size} px, classes {','.join(map(str, args.classes))}"
    quality = dict(sample=partial(pooled, pairs), classes=args.classes)  # the pairs' samples together
    run.start(data, args.epochs * len(data) // args.critic_repeats, partial(grids, pairs), about, **quality)
    with run:
        while run.running():
            losses = {}
            for p in pairs:  # each pair reads only its own class, networks and noise
                for _ in range(args.critic_repeats):
                    real = p.reader.next()
                    loss_d = d_step(p.fast_G, p.fast_D, p.opt_d, real, p.z(p.data.batch), p.augment)
                loss_g = g_step(p.fast_G, p.fast_D, p.opt_g, p.z(p.data.batch), p.augment)
                common.ema_update(p.G_ema, p.G, args.ema, run.step)
                losses.update({f"loss_d_{p.c}": loss_d, f"loss_g_{p.c}": loss_g})
            run.batches_done += args.critic_repeats  # Run counts the batches each pair drew
            run.step_done(sum(p.data.batch for p in pairs) * args.critic_repeats, **losses)
    run.finish([[f"loss_d_{p.c}", f"loss_g_{p.c}"] for p in pairs], title=SCRIPT, walk=False)
    ends = torch.randn(2, 8, args.zdim, generator=torch.Generator().manual_seed(args.seed + 1)).to(run.device)
    for p in pairs if run.main else []:  # each pair's own loss plot and latent walk (rank 0 writes)
        loss_keys = [[f"loss_d_{p.c}", f"loss_g_{p.c}"]]
        common.plot_losses(run.out, loss_keys, run.out / p.name / "losses.png", f"{SCRIPT}: {p.name}")
        with run.own_statistics([p.G_ema]):  # the average's own BatchNorm statistics, as in every figure
            walk = sample(p.G_ema, common.interpolation_latents(ends[0], ends[1], 10))
        common.save_grid(walk, run.out / p.name / "interpolation.png", nrow=10)
    return {p.c: (p.G, p.D) for p in pairs}


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.resume is None:
        common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
