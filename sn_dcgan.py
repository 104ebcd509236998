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
- Speed, none of which changes the maths: --amp runs the forward passes in bfloat16 autocast and
  the losses in float32 (the power iteration and sigma stay float32); --compile runs the steps
  through torch.compile'd copies of G and D (checkpoints hold the plain modules); on CUDA,
  cudnn.benchmark and channels_last unless --deterministic.

Examples:
    python sn_dcgan.py --data_root ./data                     # MNIST at 32 x 32, BCE
    python sn_dcgan.py --loss hinge --out runs/sn_dcgan_hinge
    python sn_dcgan.py --dataset cifar10 --loss hinge --lr 0.0001 --beta2 0.9 --critic_repeats 5
"""

import argparse
import math
import types
from pathlib import Path

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


def _float32_normalize(self, weight):
    with torch.autocast(weight.device.type, enabled=False):
        return type(self).forward(self, weight)


def spectral_norm(layer):
    """torch's spectral_norm, its power iteration and sigma run with autocast off: under --amp they
    stay float32 (CUDA's autocast would compute W v in bfloat16 and mix dtypes in u^T W v).
    Bound to the parametrization itself, so a deepcopy of D gets its own power iteration."""
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


def d_step(G, D, opt_d, real, zdim, kind, amp=False):
    """One D update on a real and a detached fake batch; the power iteration advances in D's forward.

    amp: the forward passes in bfloat16 autocast, the loss on float32 logits."""
    z = torch.randn(len(real), zdim, device=real.device)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=amp):
        with torch.no_grad():
            fake = G(z)
        real_logits, fake_logits = D(real), D(fake)
    loss = discriminator_loss(real_logits.float(), fake_logits.float(), kind)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, batch, zdim, kind, device, amp=False):
    """One G update through D; D's weights are frozen, not stepped."""
    D.requires_grad_(False)
    z = torch.randn(batch, zdim, device=device)
    with torch.autocast(device.type, torch.bfloat16, enabled=amp):
        fake_logits = D(G(z))
    loss = generator_loss(fake_logits.float(), kind)
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
    G, D, opt_g, opt_d = build(args, data.channels, device, memory_format)
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
        for opt in (opt_g, opt_d):
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
                real = real.contiguous(memory_format=memory_format)
                loss_d = d_step(fast_G, fast_D, opt_d, real, args.zdim, args.loss, args.amp)
                batches_done += 1
            loss_g = g_step(fast_G, fast_D, opt_g, data.batch, args.zdim, args.loss, device, args.amp)
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
    common.plot_losses(out, [["loss_d", "loss_g"]], title=f"{SCRIPT} ({args.loss} loss)")
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
    common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
