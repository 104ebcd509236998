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
- RMSprop, lr 5e-5 (the paper found momentum-based optimizers such as Adam unstable here),
  clip c = 0.01 (--clip), n_critic = 5 (--critic_repeats), batch 64; each critic update draws a
  fresh real batch.
- DCGAN-shaped networks: G with BatchNorm + ReLU and tanh; the critic with strided convs,
  BatchNorm and LeakyReLU 0.2, as in the authors' code; --hidden_dim 64 filters at the image
  end, doubling toward 4 x 4; images 32 x 32. DCGAN's N(0, 0.02) init for both.
- The authors' code (github.com/martinarjovsky/WassersteinGAN) also trains the critic 100 times
  per generator step during the first 25 generator steps and at every 500th, so that the critic
  is near its optimum when the estimate matters; that is not in the paper's Algorithm 1 and is
  off by default here: --warmup_critic turns it on.
- Speed, none of which changes the maths: --amp runs the forward passes in bfloat16 autocast and
  the losses in float32 (the clipping acts on the float32 weights); --compile runs the steps
  through torch.compile'd copies of G and the critic (checkpoints hold the plain modules); on
  CUDA, cudnn.benchmark and channels_last unless --deterministic.

Examples:
    python wgan.py --data_root ./data                         # MNIST at 32 x 32
    python wgan.py --warmup_critic --epochs 100               # as the authors' code schedules it
    python wgan.py --dataset cifar10 --out runs/wgan_cifar
"""

import argparse
import math
from pathlib import Path

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
        parser, "wgan", lr=5e-5, batch=64, hidden_dim=64, critic_repeats=5, zdim=100, epochs=25
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
        self.image_shape = (channels, image_size, image_size)
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


def critic_step(G, critic, opt_c, real, zdim, clip, amp=False):
    """One critic update: descend f(G(z)) - f(x), then clip. Returns (loss, Wasserstein estimate).

    amp: the forward passes in bfloat16 autocast, the loss on float32 scores."""
    z = torch.randn(len(real), zdim, device=real.device)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=amp):
        with torch.no_grad():
            fake = G(z)
        real_scores, fake_scores = critic(real), critic(fake)
    wasserstein = real_scores.float().mean() - fake_scores.float().mean()
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


def generator_step(G, critic, opt_g, batch, zdim, device, amp=False):
    """One generator update: descend -f(G(z)). The critic's weights are frozen, not stepped."""
    critic.requires_grad_(False)
    z = torch.randn(batch, zdim, device=device)
    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
        fake_scores = critic(G(z))
    loss = -fake_scores.float().mean()
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
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    out = Path(args.out)
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

    memory_format = common.setup_backends(device, args)  # channels_last on CUDA, as before on CPU
    data = common.make_batches(args, device)
    G, critic, opt_g, opt_c = build(args, data.channels, device, memory_format)
    # the steps call compiled modules that share the nets' parameters; checkpoints and samples use
    # G and critic themselves, so their state_dict keys have no _orig_mod. prefix
    fast_G, fast_critic = (torch.compile(G), torch.compile(critic)) if args.compile else (G, critic)
    fixed_z = torch.randn(64, args.zdim, device=device)
    step, batches_done = 0, 0
    if ckpt:
        G.load_state_dict(ckpt["G"])
        critic.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_c.load_state_dict(ckpt["opt_d"])
        for opt in (opt_g, opt_c):
            for group in opt.param_groups:
                group["lr"] = args.lr  # a --lr given with --resume wins over the saved one
        step, batches_done, fixed_z = ckpt["step"], ckpt["batches_done"], ckpt["fixed_z"].to(device)
        common.set_rng_state(ckpt["rng"])
        common.truncate_log(out, step)
        print(f"resumed from {args.resume} at step {step}")
    out.mkdir(parents=True, exist_ok=True)

    total, planned = 0, 0  # generator steps that fit in --epochs passes of the data
    while planned + critic_updates(total, args) <= args.epochs * len(data):
        planned += critic_updates(total, args)
        total += 1
    if args.max_steps:
        total = min(total, args.max_steps)
    log = common.RunLog(out, total, args.log_every, step, ckpt["elapsed"] if ckpt else 0.0)

    def save():
        state = {
            "G": G.state_dict(),
            "D": critic.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_c.state_dict(),
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
            n_critic = critic_updates(step, args)
            for _ in range(n_critic):
                real = next(loader, None)
                if real is None:  # an epoch ended: the next one starts in a new order
                    loader = data.batches(batches_done // len(data))
                    real = next(loader)
                real = real.contiguous(memory_format=memory_format)
                loss_c, wasserstein = critic_step(
                    fast_G, fast_critic, opt_c, real, args.zdim, args.clip, args.amp
                )
                batches_done += 1
            loss_g = generator_step(fast_G, fast_critic, opt_g, data.batch, args.zdim, device, args.amp)
            step += 1
            log.add(data.batch * n_critic, loss_c=loss_c, loss_g=loss_g, wasserstein=wasserstein)
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
    common.plot_losses(out, [["loss_c", "loss_g"], ["wasserstein"]], title=f"{SCRIPT} (clip {args.clip})")
    walk = torch.Generator().manual_seed(args.seed + 1)
    z_ends = torch.randn(2, 8, args.zdim, generator=walk).to(device)
    common.save_grid(
        sample(G, common.interpolation_latents(z_ends[0], z_ends[1], 10)), out / "interpolation.png", 10
    )
    print(f"{'stopped' if stop.requested else 'done'} at step {step}; outputs in {out}")
    return G, critic


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
