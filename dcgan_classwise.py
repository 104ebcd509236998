"""Class-wise DCGAN: one independent generator/discriminator pair per class of a labelled dataset.

Networks and training: Alec Radford, Luke Metz, Soumith Chintala. "Unsupervised Representation
Learning with Deep Convolutional Generative Adversarial Networks", ICLR 2016.
https://arxiv.org/abs/1511.06434 (the networks are dcgan.py's: see its docstring).

An earlier implementation this collection grew from (classDCGAN) trained CIFAR-10 with ten DCGAN
pairs, one per class, each making its own GIF. This file does that for CIFAR-10, MNIST and
Fashion-MNIST. Pair c plays DCGAN's game on the images of class c alone:

    loss_D_c = -log D_c(x) - log(1 - D_c(G_c(z)))      x drawn from class c only
    loss_G_c = -log D_c(G_c(z))                          (non-saturating, BCE on logits)

The pairs share nothing but the code: no parameter, optimizer, batch or random number. Each pair
has its own noise generator and its own initialisation, both seeded from (--seed, class), so pair
c trains exactly the same whether it runs alone (--classes 3) or beside nine others.

A step updates every pair once (--critic_repeats D updates, then one G update). An epoch is as many
steps as the largest chosen class has batches; a smaller class starts its next pass early.

Defaults: DCGAN's (Adam lr 2e-4, beta1 0.5, batch 128, z of size 100, --hidden_dim 64, 32 x 32).

Speed, as in dcgan.py and none of it changing the maths: --amp (bfloat16 autocast forward passes,
float32 losses), --compile (each pair's steps through torch.compile'd copies of its G and D; the
checkpoints hold the plain modules), on CUDA cudnn.benchmark and channels_last unless --deterministic.

Run folder:
    OUT/checkpoint.pt               the run: script, flags, step; what --resume takes
    OUT/class_<i>_<name>/           one per pair: checkpoint.pt (nets, optimizers, step, noise state),
                                    samples/, progress.gif, losses.png, interpolation.png, generated/
    OUT/samples/epoch_XXXX.png      one row per class; OUT/progress.gif animates them
    OUT/log.csv, OUT/losses.png     loss_d_<i> and loss_g_<i> for every class

Examples:
    python dcgan_classwise.py --data_root ./data --epochs 10                  # ten MNIST digits
    python dcgan_classwise.py --dataset cifar10 --classes 0,1 --out runs/planes_and_cars
    python dcgan_classwise.py --resume runs/dcgan_classwise/checkpoint.pt --generate 1000
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import common
from dcgan import Discriminator, Generator

SCRIPT = "dcgan_classwise.py"
SHAPE_FLAGS = ("dataset", "image_size", "zdim", "hidden_dim", "arch", "classes")
LABELLED = ("mnist", "fashion-mnist", "cifar10")


def class_list(text):
    try:
        classes = sorted({int(c) for c in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of classes, e.g. 0,3") from None
    if min(classes) < 0 or max(classes) > 9:
        raise argparse.ArgumentTypeError(f"{text!r}: classes are 0 to 9")
    return classes


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_flags(
        parser,
        "dcgan_classwise",
        lr=2e-4,
        batch=128,
        hidden_dim=64,
        critic_repeats=1,
        zdim=100,
        epochs=25,
        datasets=LABELLED,
    )
    p = parser.add_argument
    p("--image_size", type=common.positive_int, default=32, help="images are resized to N x N (default 32)")
    p("--classes", type=class_list, default=None, help="classes to train, e.g. 0,3 (default: all ten)")
    p(
        "--arch",
        choices=("conv", "linear"),
        default="conv",
        help="conv: the paper's networks; linear: linDCGAN (default conv)",
    )
    p("--beta1", type=common.unit_interval, default=0.5, help="Adam beta1 (default 0.5, the paper's)")
    flags = parser._option_string_actions
    flags["--generate"].help = "with --resume: write N samples per class to OUT/class_<i>_<name>/generated/"
    parser.epilog = (
        "--resume takes the run's OUT/checkpoint.pt and reads each pair from "
        "OUT/class_<i>_<name>/checkpoint.pt (one file per pair, each written atomically; "
        "a pair saved ahead of the others waits for them)."
    )
    common.add_speed_flags(parser)
    return parser


# ---------------------------------------------------------------------------------------------
# DCGAN's losses and steps, with each pair's own noise generator
# ---------------------------------------------------------------------------------------------


def discriminator_loss(real_logits, fake_logits):
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    return real + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits):
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def d_step(G, D, opt_d, real, args, noise):
    """Real and fake batches through D in separate passes, as in dcgan.py; --amp as there."""
    z = torch.randn(len(real), args.zdim, device=real.device, generator=noise)
    with torch.autocast(real.device.type, torch.bfloat16, enabled=args.amp):
        with torch.no_grad():
            fake = G(z)
        real_logits, fake_logits = D(real), D(fake)
    loss = discriminator_loss(real_logits.float(), fake_logits.float())
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss


def g_step(G, D, opt_g, batch, args, noise):
    D.requires_grad_(False)
    z = torch.randn(batch, args.zdim, device=noise.device, generator=noise)
    with torch.autocast(noise.device.type, torch.bfloat16, enabled=args.amp):
        fake_logits = D(G(z))
    loss = generator_loss(fake_logits.float())
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    D.requires_grad_(True)
    return loss


# ---------------------------------------------------------------------------------------------
# One pair per class
# ---------------------------------------------------------------------------------------------


class Pair:
    """Class c's DCGAN: its images, G and D, their optimizers, its noise, and where it is in its data."""

    def __init__(self, args, c, images, channels, device, memory_format=torch.contiguous_format):
        self.c = c
        self.name = f"class_{c}_{common.CLASS_NAMES[args.dataset][c]}"
        self.data = (
            common.TensorBatches(images, args.batch, device, args.seed) if images is not None else None
        )
        with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
            torch.manual_seed(args.seed * 1000 + c)
            self.G = Generator(args.zdim, args.hidden_dim, args.image_size, channels, args.arch)
            self.D = Discriminator(args.hidden_dim, args.image_size, channels, args.arch)
        self.memory_format = memory_format
        self.G.to(device, memory_format=memory_format)
        self.D.to(device, memory_format=memory_format)
        self.fast_G, self.fast_D = self.G, self.D
        if args.compile:  # the steps call compiled modules sharing the parameters; checkpoints use G, D
            self.fast_G, self.fast_D = torch.compile(self.G), torch.compile(self.D)
        self.lr = args.lr
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
        self.noise = torch.Generator(device=device).manual_seed(args.seed * 1000 + c)
        self.fixed_z = torch.randn(64, args.zdim, device=device, generator=self.noise)
        self.step, self.batches_done, self.loader = 0, 0, None

    def state(self):
        nets = {"G": self.G.state_dict(), "D": self.D.state_dict()}
        opts = {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}
        position = {"step": self.step, "batches_done": self.batches_done, "noise": self.noise.get_state()}
        return {**nets, **opts, **position, "fixed_z": self.fixed_z, "image_shape": list(self.G.image_shape)}

    def load(self, ckpt):
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.lr  # a --lr given with --resume wins over the saved one
        self.noise.set_state(ckpt["noise"])
        self.fixed_z = ckpt["fixed_z"].to(self.fixed_z.device)
        self.step, self.batches_done = ckpt["step"], ckpt["batches_done"]

    def train_step(self, args):
        """--critic_repeats D updates on batches of this class, then one G update."""
        for _ in range(args.critic_repeats):
            real = next(self.loader, None) if self.loader else None
            if real is None:  # first step, or this class's pass ended: next pass, in its own order
                epoch = self.batches_done // len(self.data)
                self.loader = self.data.batches(epoch, self.batches_done % len(self.data))
                real = next(self.loader)
            real = real.contiguous(memory_format=self.memory_format)
            loss_d = d_step(self.fast_G, self.fast_D, self.opt_d, real, args, self.noise)
            self.batches_done += 1
        loss_g = g_step(self.fast_G, self.fast_D, self.opt_g, self.data.batch, args, self.noise)
        self.step += 1
        return loss_d, loss_g


def by_time(folder):
    return sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime)


@torch.no_grad()
def sample(G, z):
    G.eval()
    images = torch.cat([G(chunk) for chunk in z.split(512)])
    G.train()
    return images


def pair_checkpoint(run_checkpoint, pair):
    path = Path(run_checkpoint).parent / pair.name / "checkpoint.pt"
    ckpt = common.load_checkpoint_file(path)
    if ckpt.get("script") != SCRIPT or ckpt.get("class") != pair.c:
        common.fail(f"{path} is not {SCRIPT}'s checkpoint of class {pair.c}")
    return ckpt


def train(args):
    device = common.pick_device(args.device)
    common.seed_everything(args.seed)
    out = Path(args.out)
    ckpt = None
    if args.resume:
        ckpt = common.load_checkpoint_file(args.resume)
        common.check_checkpoint(ckpt, SCRIPT, args, SHAPE_FLAGS)
        if "class" in ckpt:
            common.fail(f"--resume {args.resume} is one pair's; resume the run from its OUT/checkpoint.pt")
    if args.generate:
        for c in args.classes:
            pair = Pair(args, c, None, ckpt["channels"], device)
            pair.G.load_state_dict(pair_checkpoint(args.resume, pair)["G"])
            z = torch.randn(args.generate, args.zdim, generator=torch.Generator().manual_seed(args.seed + c))
            common.save_pngs(sample(pair.G, z.to(device)), out / pair.name / "generated")
        print(f"wrote {args.generate} images per class to {out}/class_*/generated")
        return None

    memory_format = common.setup_backends(device, args)  # channels_last on CUDA, as before on CPU
    images, labels = common.load_tensor_dataset(args.dataset, args.data_root, args.image_size, args.classes)
    pairs = []
    for c in args.classes:
        if not (labels == c).any():
            common.fail(f"--classes: {args.dataset} in {args.data_root} has no images of class {c}")
        pairs.append(Pair(args, c, images[labels == c], images.shape[1], device, memory_format))
    if ckpt:
        for pair in pairs:
            pair.load(pair_checkpoint(args.resume, pair))
        common.truncate_log(out, min(p.step for p in pairs))
        print(f"resumed from {args.resume} at step {min(p.step for p in pairs)}")
    out.mkdir(parents=True, exist_ok=True)

    steps_per_epoch = max(1, max(len(p.data) for p in pairs) // args.critic_repeats)
    total = args.epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)
    step = min(p.step for p in pairs)
    log = common.RunLog(out, total, args.log_every, step, ckpt["elapsed"] if ckpt else 0.0)

    def save():
        made = {"script": SCRIPT, "args": vars(args), "elapsed": log.elapsed()}
        for pair in pairs:  # each file whole; a pair saved ahead of the others waits for them on resume
            common.save_checkpoint(
                out / pair.name / "checkpoint.pt", {**pair.state(), **made, "class": pair.c}
            )
        common.save_checkpoint(out / "checkpoint.pt", {**made, "step": step, "channels": images.shape[1]})

    def grids(name):
        rows = []
        for pair in pairs:
            x = sample(pair.G, pair.fixed_z)
            common.save_grid(x, out / pair.name / "samples" / f"{name}.png")
            rows.append(x[:8])
        common.save_grid(torch.cat(rows), out / "samples" / f"{name}.png", nrow=8)

    sizes = ", ".join(f"{p.name} {len(p.data.images)}" for p in pairs)
    print(f"{SCRIPT}: {args.dataset} at {args.image_size} px ({sizes}), {total} steps on {device}")
    saved_grid_at = step
    with common.StopRequest() as stop:
        while step < total and not stop.requested:
            losses = {}
            for pair in pairs:
                if pair.step == step:
                    losses[f"loss_d_{pair.c}"], losses[f"loss_g_{pair.c}"] = pair.train_step(args)
            step += 1
            log.add(sum(p.data.batch for p in pairs) * args.critic_repeats, **losses)
            log.step(step, step // steps_per_epoch)
            finished_epoch = step % steps_per_epoch == 0
            if finished_epoch or (args.sample_every and step % args.sample_every == 0):
                grids(f"epoch_{step // steps_per_epoch:04d}" if finished_epoch else f"step_{step:06d}")
                saved_grid_at = step
                log.step(step, step // steps_per_epoch, force=True)  # losses finite before saving
                save()
    log.step(step, step // steps_per_epoch, force=True)
    save()
    if saved_grid_at != step:
        grids(f"step_{step:06d}")
    walk = torch.Generator().manual_seed(args.seed + 1)
    z_ends = torch.randn(2, 8, args.zdim, generator=walk).to(device)
    for pair in pairs:
        folder = out / pair.name
        common.save_gif(by_time(folder / "samples"), folder / "progress.gif")
        keys = [[f"loss_d_{pair.c}", f"loss_g_{pair.c}"]]
        common.plot_losses(out, keys, path=folder / "losses.png", title=f"{SCRIPT}: {pair.name}")
        walk_images = sample(pair.G, common.interpolation_latents(z_ends[0], z_ends[1], 10))
        common.save_grid(walk_images, folder / "interpolation.png", 10)
    common.save_gif(by_time(out / "samples"), out / "progress.gif")
    common.plot_losses(out, [[f"loss_d_{p.c}", f"loss_g_{p.c}"] for p in pairs], title=SCRIPT)
    print(f"{'stopped' if stop.requested else 'done'} at step {step}; outputs in {out}")
    return {pair.c: (pair.G, pair.D) for pair in pairs}


def main(argv=None):
    parser = build_parser()
    args = common.parse_args(parser, argv)
    if args.classes is None:
        args.classes = list(range(10))
    if args.resume is None:
        common.check_image_size(parser, args.image_size)
    return train(args)


if __name__ == "__main__":
    main()
