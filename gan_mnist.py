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
  LeakyReLU 0.2, dropout 0.3 in D (the paper trains D with dropout), tanh output on images
  scaled to [-1, 1]. BatchNorm after G's hidden layers (Radford et al. 2015; the paper predates
  BatchNorm, --no-g_batchnorm gives its plain MLP): on 4,000 real digits, 30 epochs without it
  gave mostly 1s, 7s and 9s in speckle, with it all ten digits (README). The paper's own nets
  (maxout D, 1200-unit G, SGD with momentum) are not reproduced; these widths train in minutes.
- Adam, lr 2e-4, betas (0.5, 0.999), batch 64: Radford et al. 2015 showed these stabilise GAN
  training; the paper itself used SGD with momentum. One D step per G step (k = 1, as the
  paper's experiments).
- Speed, none of which changes the maths: --amp runs the forward passes in bfloat16 autocast and
  the losses in float32; --compile runs the steps through torch.compile'd copies of G and D
  (checkpoints hold the plain modules); --deterministic asks CUDA for repeatable kernels.

The three set-ups this collection grew from, with flags alone:
    python gan_mnist.py --zdim 64 --lr 0.00001 --batch 128 --hidden_dim 128 --epochs 200
    python gan_mnist.py --digit 0 --zdim 64 --g_widths 128,512 --d_widths 256 --lr 0.001 --lr_d 0.05 \\
        --d_dropout 0 --no-g_batchnorm
    python gan_mnist.py --epochs 50        # the tutorial: progress.gif and interpolation.png
Compare the generator losses:
    python gan_mnist.py --g_loss minimax --out runs/gan_mnist_minimax
"""

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

SCRIPT = "gan_mnist.py"
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
    p("--d_dropout", type=common.unit_interval, default=0.3, help="dropout after D's hidden layers (0.3)")
    p(
        "--g_batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="BatchNorm after G's hidden layers (default on; --no-g_batchnorm: the paper's plain MLP)",
    )
    common.add_speed_flags(parser)
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
    """Image -> hidden layers (Linear, LeakyReLU 0.2, dropout) -> one logit (no sigmoid: BCE on logits)."""

    def __init__(self, image_shape, widths, dropout):
        super().__init__()
        layers, width_in = [nn.Flatten()], image_shape.numel()
        for width in widths:
            layers += [nn.Linear(width_in, width), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            width_in = width
        layers += [nn.Linear(width_in, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).view(-1)


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


def d_step(G, D, opt_d, real, zdim, amp=False):
    """Ascend D's objective; the fake batch is detached so no gradient reaches G.

    amp: the forward passes in bfloat16 autocast, the loss on float32 logits."""
    z = torch.randn(len(real), zdim, device=real.device)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=amp):
        with torch.no_grad():  # no gradient reaches G, and no graph is built for one
            fake = G(z)
        real_logits, fake_logits = D(real), D(fake)
    loss = discriminator_loss(real_logits.float(), fake_logits.float())
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, batch, zdim, kind, device, amp=False):
    """Descend G's objective through D; D's parameters get gradients but only opt_g steps."""
    z = torch.randn(batch, zdim, device=device)
    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
        fake_logits = D(G(z))
    loss = generator_loss(fake_logits.float(), kind)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def build(args, channels, device):
    shape = torch.Size((channels, args.image_size, args.image_size))
    h = args.hidden_dim
    G = Generator(args.zdim, args.g_widths or [h, 2 * h, 4 * h], shape, args.g_batchnorm).to(device)
    D = Discriminator(shape, args.d_widths or [4 * h, 2 * h, h], args.d_dropout).to(device)
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
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    out = Path(args.out)
    classes = None if args.digit is None else [args.digit]
    if args.digit is not None and args.dataset not in ("mnist", "fashion-mnist", "cifar10"):
        common.fail(f"--digit needs a labelled dataset (mnist, fashion-mnist, cifar10), not {args.dataset}")
    ckpt = None
    if args.resume:
        ckpt = common.load_checkpoint_file(args.resume)
        common.check_checkpoint(ckpt, SCRIPT, args, SHAPE_FLAGS)
    if args.generate:
        G, *_ = build(args, ckpt["image_shape"][0], device)
        G.load_state_dict(ckpt["G"])
        z = torch.randn(args.generate, args.zdim, generator=torch.Generator().manual_seed(args.seed))
        common.save_pngs(sample(G, z.to(device)), out / "generated")
        print(f"wrote {args.generate} images to {out / 'generated'}")
        return None

    common.setup_backends(device, args, conv=False)  # --deterministic on CUDA; nothing on CPU
    data = common.make_batches(args, device, classes)
    G, D, opt_g, opt_d = build(args, data.channels, device)
    # the steps call compiled modules that share G's and D's parameters; checkpoints and samples
    # use G and D themselves, so their state_dict keys have no _orig_mod. prefix
    fast_G, fast_D = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    fixed_z = torch.randn(64, args.zdim, device=device)
    step, batches_done = 0, 0
    if ckpt:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        for opt, lr in ((opt_g, args.lr), (opt_d, args.lr_d or args.lr)):
            for group in opt.param_groups:
                group["lr"] = lr  # a --lr given with --resume wins over the saved one
        step, batches_done, fixed_z = ckpt["step"], ckpt["batches_done"], ckpt["fixed_z"].to(device)
        common.set_rng_state(ckpt["rng"])
        common.truncate_log(out, step)
        print(f"resumed from {args.resume} at step {step}")
    out.mkdir(parents=True, exist_ok=True)

    total = args.epochs * len(data) // args.critic_repeats
    if args.max_steps:
        total = min(total, args.max_steps)
    log = common.RunLog(out, total, args.log_every, step, ckpt["elapsed"] if ckpt else 0.0)

    def save():
        state = {
            "G": G.state_dict(),
            "D": D.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
        }
        state.update(script=SCRIPT, args=vars(args), step=step, batches_done=batches_done, fixed_z=fixed_z)
        state.update(epoch=batches_done // len(data), elapsed=log.elapsed(), image_shape=list(G.image_shape))
        common.save_checkpoint(out / "checkpoint.pt", state)

    epoch = batches_done // len(data)
    saved_grid_at = step
    loader = data.batches(epoch, batches_done % len(data))
    print(
        f"{SCRIPT}: {args.dataset}, {len(data)} batches of {data.batch} per epoch, {total} steps on {device}"
    )
    with common.StopRequest() as stop:
        while step < total and not stop.requested:
            for _ in range(args.critic_repeats):
                real = next(loader, None)
                if real is None:  # an epoch ended: the next one starts in a new order
                    loader = data.batches(batches_done // len(data))
                    real = next(loader)
                loss_d = d_step(fast_G, fast_D, opt_d, real, args.zdim, args.amp)
                batches_done += 1
            loss_g = g_step(fast_G, fast_D, opt_g, data.batch, args.zdim, args.g_loss, device, args.amp)
            step += 1
            log.add(data.batch * args.critic_repeats, loss_d=loss_d, loss_g=loss_g)
            log.step(step, batches_done // len(data))
            finished_epoch = batches_done // len(data) > epoch
            if finished_epoch or (args.sample_every and step % args.sample_every == 0):
                epoch = batches_done // len(data)
                name = f"epoch_{epoch:04d}" if finished_epoch else f"step_{step:06d}"
                common.save_grid(sample(G, fixed_z), out / "samples" / f"{name}.png")
                saved_grid_at = step
                log.step(step, epoch, force=True)  # checks the losses are finite before saving
                save()
    log.step(step, batches_done // len(data), force=True)
    save()
    if saved_grid_at != step:
        common.save_grid(sample(G, fixed_z), out / "samples" / f"step_{step:06d}.png")
    common.save_gif(
        sorted((out / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime), out / "progress.gif"
    )
    common.plot_losses(out, [["loss_d", "loss_g"]], title=f"{SCRIPT} ({args.g_loss} G loss)")
    walk = torch.Generator().manual_seed(args.seed + 1)
    z_ends = torch.randn(2, 8, args.zdim, generator=walk).to(device)
    common.save_grid(
        sample(G, common.interpolation_latents(z_ends[0], z_ends[1], 10)), out / "interpolation.png", 10
    )
    print(f"{'stopped' if stop.requested else 'done'} at step {step}; outputs in {out}")
    return G, D


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    return train(args)


if __name__ == "__main__":
    main()
