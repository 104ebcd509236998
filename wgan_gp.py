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
- Algorithm 1: lambda (--c_lambda) 10, n_critic (--critic_repeats) 5, Adam lr 1e-4,
  betas (0, 0.9), batch 64. Each critic update draws a fresh real batch.
- No BatchNorm in the critic: the penalty is a per-sample quantity and batch normalization
  makes each sample's score depend on the rest of the batch (section 4). The paper recommends
  layer normalization as a drop-in replacement; --critic_norm layer (the default) normalizes
  each sample over (C, H, W) with a per-channel scale and offset; --critic_norm none drops it.
- DCGAN-shaped networks (G: BatchNorm + ReLU, tanh; critic: strided convs, LeakyReLU 0.2),
  --hidden_dim 64 filters at the image end, doubling toward 4 x 4; images 32 x 32.
- Speed, none of which changes the maths: --amp runs the forward passes in bfloat16 autocast,
  the losses in float32, and the penalty's gradient (taken with respect to the float32 x_hat,
  so float32) and its norm in float32; --compile compiles G only, the critic stays eager
  (torch.compile does not support the double backward of the penalty); on CUDA, cudnn.benchmark
  and channels_last unless --deterministic.

Examples:
    python wgan_gp.py --data_root ./data                      # MNIST at 32 x 32
    python wgan_gp.py --epochs 100 --zdim 64 --lr 0.0002 --batch 128 --hidden_dim 64 \\
        --c_lambda 10 --critic_repeats 5                      # the earlier implementation's flags
    python wgan_gp.py --dataset cifar10 --image_size 32 --out runs/wgan_gp_cifar
"""

import argparse
import math
from pathlib import Path

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
        parser, "wgan_gp", lr=1e-4, batch=64, hidden_dim=64, critic_repeats=5, zdim=100, epochs=25
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


def gradient_penalty(critic, real, fake, c_lambda, eps=None, amp=False):
    """lambda * mean_i (||grad f(x_hat_i)||_2 - 1)^2 with x_hat_i = eps_i x_i + (1 - eps_i) G(z_i).

    amp: f(x_hat) in bfloat16 autocast; x_hat itself is made outside it, in the batch's dtype, so
    the gradient comes back in that dtype (float32) and the norm and the square are taken there."""
    if eps is None:
        eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake.to(real.dtype)).requires_grad_(True)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=amp):
        scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return c_lambda * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_step(G, critic, opt_c, real, zdim, c_lambda, amp=False):
    """One critic update: descend f(G(z)) - f(x) + penalty. Returns (loss, W estimate, penalty).

    amp: the forward passes in bfloat16 autocast, the loss on float32 scores."""
    z = torch.randn(len(real), zdim, device=real.device)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=amp):
        with torch.no_grad():
            fake = G(z)
        real_scores, fake_scores = critic(real), critic(fake)
    wasserstein = real_scores.float().mean() - fake_scores.float().mean()
    penalty = gradient_penalty(critic, real, fake, c_lambda, amp=amp)
    loss = -wasserstein + penalty
    opt_c.zero_grad(set_to_none=True)
    loss.backward()
    opt_c.step()
    return loss, wasserstein, penalty


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
    # only G is compiled (the penalty's double backward needs the eager critic); the steps call the
    # compiled G, which shares G's parameters: checkpoints keep keys without an _orig_mod. prefix
    fast_G = torch.compile(G) if args.compile else G
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

    total = args.epochs * len(data) // args.critic_repeats
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
            for _ in range(args.critic_repeats):
                real = next(loader, None)
                if real is None:  # an epoch ended: the next one starts in a new order
                    loader = data.batches(batches_done // len(data))
                    real = next(loader)
                real = real.contiguous(memory_format=memory_format)
                loss_c, wasserstein, penalty = critic_step(
                    fast_G, critic, opt_c, real, args.zdim, args.c_lambda, args.amp
                )
                batches_done += 1
            loss_g = generator_step(fast_G, critic, opt_g, data.batch, args.zdim, device, args.amp)
            step += 1
            log.add(
                data.batch * args.critic_repeats,
                loss_c=loss_c,
                loss_g=loss_g,
                wasserstein=wasserstein,
                penalty=penalty,
            )
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
    common.plot_losses(
        out, [["loss_c", "loss_g"], ["wasserstein"], ["penalty"]], title=f"{SCRIPT} (lambda {args.c_lambda})"
    )
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
