"""The run plumbing, data loading and plotting shared by the scripts of this collection.

Nothing here trains anything: every model file keeps its own networks, losses and loop
(CONTRIBUTING.md says how a model file is laid out). What lives here:

- arguments: validated flag types, the flags every image script accepts, resume of flags;
- data: MNIST, Fashion-MNIST and CIFAR-10 decoded once into one uint8 tensor and served as
  shuffled batches by index (on the GPU when training there); CelebA and any folder of
  images through a DataLoader with workers; a clear message when data is missing;
- output: image grids, GIFs, loss plots, latent interpolation, PNG files for `--generate`,
  a CSV log with a progress line, atomic checkpoints, RNG state, device choice;
- speed: --amp, --compile and --deterministic; on CUDA cudnn; channels_last for conv nets on the CPU,
  and on CUDA under bfloat16 autocast;
- `Run`: the plumbing of one training run (device and seed, checkpoint check, restore and save,
  the log, Ctrl-C, per-epoch grids, --generate, the closing plots), so that a model file's
  train() shows its algorithm and nothing else. The model hands it what it owns, by name;
- more than one process: under torchrun, `Run` joins the process group, wraps the networks in
  DistributedDataParallel, gives each process its share of the data and of the noise, and lets
  only rank 0 write.
"""

import argparse
import contextlib
import csv
import importlib.util
import inspect
import math
import os
import pickle
import random
import signal
import time
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_DATASETS = ("mnist", "fashion-mnist", "cifar10", "celeba", "folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "tshirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "boot",
    ],
    "cifar10": ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def fail(message):
    """Stop with a one-line message and exit code 1, without a traceback."""
    raise SystemExit(f"error: {message}")


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _typed(cast, test, words):
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {cast.__name__}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text} must be {words}")
        return value

    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _typed(int, lambda v: v >= 0, "zero or more")
positive_float = _typed(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
nonnegative_float = _typed(float, lambda v: v >= 0 and math.isfinite(v), "zero or more")
unit_interval = _typed(float, lambda v: 0 <= v < 1, "in [0, 1)")  # Adam's betas, dropout
AUGMENTATIONS = ("color", "translation", "cutout")  # DiffAugment's three, in the order they apply
# ADA (Karras et al. 2020, section 3): every 4 steps, p moves toward keeping r = E[sign(D(x_real))]
# at 0.6, by at most 1 per 500,000 real images seen (the paper's values). A step is a G step: with
# --critic_repeats k, 4k D minibatches (p's move per real image seen is the paper's all the same)
ADA_TARGET, ADA_INTERVAL, ADA_IMAGES = 0.6, 4, 500_000


def augment_policy(text):
    """--augment: 'none', or a comma-separated list of AUGMENTATIONS, given back in their order."""
    parts = {part.strip() for part in text.split(",")}
    if parts == {"none"}:
        return "none"
    if not parts or not parts <= set(AUGMENTATIONS):
        raise argparse.ArgumentTypeError(
            f"{text!r}: none, or a comma-separated list of {', '.join(AUGMENTATIONS)}, "
            "e.g. translation,cutout"
        )
    return ",".join(a for a in AUGMENTATIONS if a in parts)


def augment_strength(text, logit=True):
    """--augment_p: a probability in [0, 1], or 'ada' where D gives a logit (see add_common_flags)."""
    if text == "ada":
        if not logit:
            raise argparse.ArgumentTypeError(
                "ada reads the sign of D's logit on real images; a WGAN critic gives a score with no "
                "such sign: give a probability in [0, 1]"
            )
        return text
    try:
        p = float(text)
    except ValueError:
        p = math.nan
    if not 0 <= p <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a probability in [0, 1], or ada")
    return p


def add_common_flags(
    parser,
    script,
    *,
    lr,
    batch,
    hidden_dim,
    critic_repeats,
    zdim=100,
    epochs=25,
    datasets=IMAGE_DATASETS,
    lr_source="the paper's",
    logit=True,
    augment=("none", 1.0, "the paper's D"),
):
    """The flags every image script accepts (CONTRIBUTING.md lists them), with this model's defaults.
    logit: D's output is a logit, positive for 'real' (not a WGAN critic's score), which ada reads.
    augment: the default --augment, --augment_p and why (the paper's D, or the measurement that
    justified another)."""
    parser.script = f"{script}.py"  # parse_args refuses another script's checkpoint before using its flags
    p = parser.add_argument
    p("--epochs", type=positive_int, default=epochs, help=f"passes over the training data (default {epochs})")
    p("--zdim", type=positive_int, default=zdim, help=f"latent size (default {zdim})")
    p("--lr", type=positive_float, default=lr, help=f"learning rate (default {lr}, {lr_source})")
    p(
        "--batch",
        type=positive_int,
        default=batch,
        help=f"batch size per process (default {batch}); under torchrun N processes train on N x batch "
        "images per step, at the same --lr",
    )
    p("--hidden_dim", type=positive_int, default=hidden_dim, help=f"base width (default {hidden_dim})")
    p(
        "--critic_repeats",
        type=positive_int,
        default=critic_repeats,
        help=f"discriminator/critic updates per generator update (default {critic_repeats})",
    )
    p(
        "--device",
        default="auto",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default auto)",
    )
    p(
        "--dataset",
        choices=datasets,
        default="mnist",
        help=f"training data: {', '.join(datasets)} (default mnist)",
    )
    p("--data_root", default="./data", help="where datasets live or are downloaded to (default ./data)")
    p(
        "--train_images",
        type=positive_int,
        default=None,
        help="train on N images of the training split, chosen by --seed (as many of each class as can be, "
        "on labelled data), to study small data sets (default: all of them)",
    )
    p(
        "--augment",
        type=augment_policy,
        default=augment[0],
        help="differentiable augmentation of every image D sees, real and generated, in both steps "
        f"(DiffAugment, Zhao et al. 2020): none, or a comma-separated list of {', '.join(AUGMENTATIONS)} "
        f"(color skips saturation on grey images). Default {augment[0]}: {augment[2]}",
    )
    ada = (
        ", or ada: from 0, raised while D's sign on real images says it is learning them by heart "
        f"(E[sign D(x)] > {ADA_TARGET}) and lowered otherwise (ADA, Karras et al. 2020)"
        if logit
        else " (ada is for D's that give a logit, not a WGAN critic)"
    )
    p(
        "--augment_p",
        type=augment_strength if logit else partial(augment_strength, logit=False),
        default=augment[1],
        help=f"with --augment: the probability that each image gets each transform; 1 = DiffAugment{ada} "
        f"(default {augment[1]:g})",
    )
    p("--out", default=f"runs/{script}", help=f"run folder (default runs/{script})")
    p(
        "--seed",
        type=int,
        default=0,
        help="seeds torch, numpy and python; same seed on CPU = same run (default 0)",
    )
    p(
        "--max_steps",
        type=positive_int,
        default=None,
        help="stop after this many generator updates (default: none)",
    )
    p(
        "--resume",
        default=None,
        help="checkpoint to continue from exactly where it stopped, with its flags unless given again; "
        "the machine's flags (--device, --amp, --compile, --deterministic, --sync_bn, --workers) are "
        f"this run's. {RESUME_AUTO_HELP} (default: none)",
    )
    add_save_minutes(parser)
    p(
        "--generate",
        type=positive_int,
        default=None,
        help="with --resume: write N samples as PNGs to OUT/generated/ and exit (default: off)",
    )
    p(
        "--sample_every",
        type=positive_int,
        default=None,
        help="also a sample grid every N steps, besides each epoch's end (default: epoch ends only)",
    )
    p(
        "--log_every",
        type=positive_int,
        default=50,
        help="log.csv row and progress every N steps (default 50)",
    )
    p(
        "--ema",
        type=unit_interval,
        default=0.999,
        help="decay of the moving average of G's weights that samples, grids and --generate use "
        "(Yazici et al. 2019; the trained G is kept and saved too); 0: G itself (default 0.999)",
    )
    p(
        "--quality",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on labelled data, the classifier FID of 1,000 fixed samples at epoch ends, in log.csv "
        "and quality.png; needs evaluate.py beside the script and torch-fidelity (default on)",
    )
    if {"celeba", "folder"} & set(datasets):
        p(
            "--workers",
            type=nonnegative_int,
            default=None,
            help="DataLoader workers for celeba/folder (default: cores per process, at most 8)",
        )


RESUME_AUTO_HELP = (
    "--resume auto: OUT/checkpoint.pt when there is one, else a fresh start, so that the same command "
    "can be run again after a restart or a requeue"
)
SAVE_MINUTES = 10.0  # a save costs under a second (docs/distributed.md): under 0.2% of the time
SAVE_SHARE = 32  # a checkpoint with a grid once 32 x the last save's cost has passed: under ~3% of the time


def add_save_minutes(parser):
    parser.add_argument(
        "--save_minutes",
        type=nonnegative_float,
        default=SAVE_MINUTES,
        help=f"also save the checkpoint every M minutes of training, so a run killed without warning "
        f"loses at most M minutes; 0: no clock, epoch ends and stops only (default {SAVE_MINUTES:g})",
    )


def add_speed_flags(parser, compile_help=None):
    """--amp, --compile and --deterministic: how fast, never what is computed on CPU by default."""
    p = parser.add_argument
    on_off = argparse.BooleanOptionalAction
    p(
        "--amp",
        action=on_off,
        default=None,
        help="bfloat16 autocast for the forward passes of G and D, losses in float32. Default: on where "
        "bfloat16 is native (CUDA GPUs with bf16 support; CPUs with bf16 support: AVX512-BF16 or AMX), "
        "where it is faster (docs/speed.md); off elsewhere. --no-amp for float32 everywhere",
    )
    p(
        "--compile",
        action=on_off,
        default=False,
        help=compile_help
        or "torch.compile G and D for the training steps (default off; the first steps compile, slowly)",
    )
    p(
        "--deterministic",
        action=on_off,
        default=False,
        help="on CUDA: torch.use_deterministic_algorithms and no cudnn.benchmark, so a --seed repeats "
        "the run; without it CUDA picks the fastest kernels. CPU runs repeat with the same --seed either "
        "way (default off)",
    )
    p(
        "--sync_bn",
        action=on_off,
        default=False,
        help="under torchrun on GPUs: BatchNorm normalizes over the whole global batch (SyncBatchNorm, "
        "one all-gather per BatchNorm layer and pass, each a wait of the CPU for the GPU). Default off: "
        "each process normalizes its own batch, as one process with --batch does. Not with --compile",
    )


def explicit_flags(parser, argv):
    """The destinations the user actually wrote on the command line (not defaults)."""
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action in parser._actions:
            action.default = saved[action.dest]


# The flags that describe the machine, not the model: with --resume they are always this run's (their
# defaults when not given), so a checkpoint trained on cuda:3 with --amp --compile samples on a laptop.
# --deterministic too: it picks CUDA's kernels, as --amp and --compile pick the arithmetic and the code.
MACHINE_FLAGS = ("device", "amp", "compile", "deterministic", "sync_bn", "workers")


def parse_args(parser, argv):
    """Parse, then with --resume take every flag the user did not write from the checkpoint, except
    the machine's (MACHINE_FLAGS) and those of this invocation (--resume, --generate, --max_steps)."""
    args = parser.parse_args(argv)
    if args.resume == "auto":  # continue the run in OUT if there is one: the same command, every time
        found = Path(args.out) / "checkpoint.pt"
        args.resume, args.resumed_auto = (str(found), True) if found.is_file() else (None, False)
        if args.generate is not None and args.resume is None:
            parser.error(f"--generate with --resume auto: no checkpoint in {args.out}")
    if args.generate is not None and args.resume is None:
        parser.error("--generate needs --resume CHECKPOINT (the model to sample from)")
    if args.resume is not None:
        given = explicit_flags(parser, argv) | set(MACHINE_FLAGS) | {"resume", "generate", "max_steps"}
        given |= {"resumed_auto", "save_minutes"}  # how this run saves is this run's, like the machine
        ckpt = load_checkpoint_file(args.resume)
        if getattr(parser, "script", None) and ckpt.get("script") != parser.script:
            check_checkpoint(ckpt, parser.script, args, ("dataset", "image_size", "zdim", "hidden_dim"))
        # a flag added after the checkpoint was made: its value before it existed, not today's default
        saved = {"augment": "none", "augment_p": 1.0, **getattr(parser, "before_flag", {}), **ckpt["args"]}
        for key, value in saved.items():
            if key not in given and hasattr(args, key):
                setattr(args, key, value)
    if getattr(args, "augment", None) == "none" and "augment_p" in explicit_flags(parser, argv):
        parser.error("--augment_p: with --augment none no image is transformed; name a policy too")
    return args


def _flag_text(value):
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def check_checkpoint(ckpt, script, args, shape_flags):
    """Refuse a checkpoint written by another script, or one whose networks have other shapes."""
    made = ckpt.get("args", {})
    flags = " ".join(f"--{k} {_flag_text(made[k])}" for k in shape_flags if k in made)
    if ckpt.get("script") != script:
        fail(
            f"{args.resume} was written by {ckpt.get('script', 'another program')} ({flags}), not by {script}"
        )
    differ = [k for k in shape_flags if k in made and made[k] != getattr(args, k)]
    if differ:
        asked = " ".join(f"--{k} {_flag_text(getattr(args, k))}" for k in differ)
        fail(f"{args.resume} was made by {script} with {flags}; this run asks for {asked}")


# ---------------------------------------------------------------------------------------------
# Device, seeds, checkpoints
# ---------------------------------------------------------------------------------------------


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"--device {name}: not a device (use auto, cpu, cuda, cuda:N or mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        fail(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        fail(f"--device {name}: MPS is not available on this machine")
    return device


def setup_backends(device, args, conv=True):
    """CUDA: cudnn.benchmark for conv nets, or repeatable kernels with --deterministic.

    Returns the memory format for conv nets and image batches (conv_memory_format)."""
    if device.type != "cuda":
        return conv_memory_format(device, conv, None)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be repeatable
    torch.use_deterministic_algorithms(args.deterministic)
    torch.backends.cudnn.benchmark = conv and not args.deterministic
    amp = amp_dtype(device, getattr(args, "amp", False))
    return conv_memory_format(device, conv and not args.deterministic, amp)


def conv_memory_format(device, conv, amp):
    """channels_last (NHWC) for conv nets where it is measured faster than the usual layout: on the
    CPU in float32 and in bfloat16 (oneDNN's convolutions prefer NHWC; benchmarks/layout.py, table in
    docs/speed.md), and on a CUDA GPU under bfloat16 autocast (its tensor cores read NHWC fastest; in
    float32 NHWC is often slower there). Elsewhere (MPS, MLPs) the usual contiguous format."""
    fast = conv and (device.type == "cpu" or (device.type == "cuda" and amp is torch.bfloat16))
    return torch.channels_last if fast else torch.contiguous_format


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def rng_state(device=torch.device("cpu")):
    """Python's, numpy's and torch's CPU generators, and the training GPU's (only when training on one)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return state


def set_rng_state(state, device=torch.device("cpu")):
    """Restore what rng_state saved; a GPU state is used only when this run trains on a GPU too."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and isinstance(state.get("cuda"), torch.Tensor):
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def cuda_bf16(device, capability=None):
    """Whether the CUDA GPU `device` computes in bfloat16 natively: compute capability 8.0 (Ampere)
    or later. capability: (major, minor), read from `device` itself when not given. (Not
    torch.cuda.is_bf16_supported: it answers for the current GPU, and without its including_emulation
    keyword, which older torch lacks, it says yes where bfloat16 is only emulated.)"""
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
    return tuple(capability) >= (8, 0)


def native_bf16(device, cpu_flags=None):
    """Whether `device` computes in bfloat16 natively: a CUDA GPU with bf16 (cuda_bf16), or a CPU
    with AVX512-BF16 or AMX (read from /proc/cpuinfo: elsewhere, no). The default of --amp."""
    if device.type == "cuda":
        return cuda_bf16(device)
    if device.type != "cpu":
        return False
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "avx512_bf16" in cpu_flags or "amx_bf16" in cpu_flags


def amp_dtype(device, amp, bf16_supported=None):
    """The autocast dtype of --amp: bfloat16 (no loss scaling needed), or None when --amp is off.
    amp None (not given): on where bfloat16 is native (native_bf16).

    On a CUDA GPU without bfloat16 (T4, V100 and older) autocast would emulate it slowly or fail;
    stop with a message instead (float16 would need a gradient scaler threaded through every step)."""
    if amp is None:
        amp = native_bf16(device)
    if not amp:
        return None
    if device.type == "cuda":
        supported = cuda_bf16(device) if bf16_supported is None else bf16_supported
        if not supported:
            fail(f"--amp: {device} has no bfloat16 support (T4, V100 and older GPUs); run without --amp")
    return torch.bfloat16


def save_checkpoint(path, state):
    """Write atomically: a temporary file in the same folder, flushed to the disk, then a rename
    (and the folder flushed), so a run killed or a machine lost at any moment leaves the old
    checkpoint or the new one, whole. A failed write removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"rng": rng_state(), **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power loss once the folder is on the disk
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a system without folder descriptors (Windows)
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def load_checkpoint_file(path):
    if not os.path.isfile(path):
        fail(f"--resume {path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say so in one line
        fail(f"--resume {path}: not a readable checkpoint ({type(e).__name__}: {e})")


EXIT_PREEMPTED = 143  # 128 + SIGTERM's 15: what a shell reports for a process ended by SIGTERM


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM sets a flag that the loop reads between steps, so the checkpoint
    is at a step boundary. A second one interrupts at once. Under torchrun the agent passes the
    signal on to every process (and kills them 30 s later); Run agrees on the stop across them."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, verbose=True, repeat_aborts=True):
        # under torchrun a repeat is ignored: a job scheduler may signal every process and torchrun
        # pass it on again, and the processes must stop together; torchrun kills them 30 s later
        self.requested, self.verbose, self.repeat_aborts = False, verbose, repeat_aborts
        self.signal = None

    def __enter__(self):
        self._previous = {}
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. some test runners): Ctrl-C behaves as usual
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if self.repeat_aborts:
                raise KeyboardInterrupt
            return
        self.requested, self.signal = True, signum
        if self.verbose:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            print(f"\n{name}: finishing this step, saving a checkpoint and the plots (again to abort)")

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


# ---------------------------------------------------------------------------------------------
# More than one process: torchrun and DistributedDataParallel
# ---------------------------------------------------------------------------------------------

# A collective that waits longer than this (a process died, or hangs) stops the run with an error
PROCESS_GROUP_TIMEOUT = timedelta(minutes=5)
# ... except the wait for another process's download of the data (CIFAR-10: 170 MB, then decoded)
DATA_WAIT = timedelta(hours=2)


def process_share():
    """(rank, number of processes): (0, 1) for a plain run, the process group's under torchrun."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def start_processes(device):
    """Under torchrun (WORLD_SIZE > 1 in the environment), join the process group: NCCL on CUDA,
    one GPU per process (cuda:LOCAL_RANK), gloo on CPU. Returns this process's device, which is
    made the current CUDA device (cuda:N alone too: pinned memory and kernels land on GPU N)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or torch.distributed.is_initialized():
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            fail(f"torchrun started local rank {local}; this machine has {torch.cuda.device_count()} GPU(s)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        fail(f"--device {device}: torchrun trains on CUDA GPUs (NCCL) or the CPU (gloo), not {device.type}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # no device_id= (torch 2.3 and later): set_device above already gives NCCL this process's GPU, and
    # with device_id NCCL can hang in torch 2.6 to 2.7.0 (pytorch#153960)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart == "0":
        torch.distributed.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
        return device
    # torchrun --max-restarts started this group again on the store of the first attempt, which still
    # holds that attempt's addresses: a process that reads them before its peer has written the new
    # ones connects to a dead process (seen with gloo, about one restart in four). A key prefix of
    # this attempt's own leaves the old keys unread.
    store, rank, size = next(torch.distributed.rendezvous("env://", timeout=PROCESS_GROUP_TIMEOUT))
    store = torch.distributed.PrefixStore(f"restart_{restart}/", store)
    torch.distributed.init_process_group(
        backend, store=store, rank=rank, world_size=size, timeout=PROCESS_GROUP_TIMEOUT
    )
    return device


_cpu_groups = {}


def cpu_group():
    """A gloo group of every process, for what is agreed on the CPU without a wait for the GPU (Ctrl-C):
    the default group under gloo; beside NCCL, one made the first time for this process group (a
    collective: every process asks at the same point, in Run). Under gloo, torchrun's processes reach
    each other through the interface that the host name resolves to, or GLOO_SOCKET_IFNAME."""
    if torch.distributed.get_backend() == "gloo":
        return None  # the default group
    world = torch.distributed.group.WORLD
    if _cpu_groups.get("world") is not world:
        _cpu_groups.update(world=world, group=torch.distributed.new_group(backend="gloo"))
    return _cpu_groups["group"]


def download_turn(rank, local_rank):
    """When a process reads (or downloads) the training data under torchrun: 0 global rank 0 first,
    1 then the first process of each other machine (which finds rank 0's files when the data root is
    a shared file system, or downloads its own copy), 2 then every other process, which finds them."""
    return 0 if rank == 0 else 1 if local_rank == 0 else 2


def distributed(net, device, sync_bn=False):
    """net in DistributedDataParallel: its gradients are averaged over the processes in backward.

    No sync of buffers at each forward (forward_sync_buffers, formerly broadcast_buffers, False):
    it would overwrite the BatchNorm statistics that D's real-batch pass saved for its backward (D
    runs twice before one backward); Run averages the buffers over the processes after each step.
    sync_bn: BatchNorm normalizes with the statistics of the whole global batch (CUDA only)."""
    if sync_bn:
        if device.type != "cuda":
            fail("--sync_bn: PyTorch's SyncBatchNorm runs on CUDA GPUs only; on the CPU leave it out")
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # in place for BatchNorm children
    ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:  # what newer torch calls it
        return ddp(net, device_ids=ids, forward_sync_buffers=False)
    return ddp(net, device_ids=ids, broadcast_buffers=False)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _missing(name, folder, files, where):
    fail(
        f"{name} is not in {folder} and could not be downloaded (no network?). "
        f"Put {', '.join(files)} in {folder} (from {where}) and run again."
    )


def _load_mnist(kind, root, download):
    from torchvision import datasets

    cls = datasets.MNIST if kind == "mnist" else datasets.FashionMNIST
    try:
        ds = cls(root, train=True, download=download)
    except Exception:  # torchvision raises RuntimeError, URLError or OSError depending on what failed
        files = ["train-images-idx3-ubyte(.gz)", "train-labels-idx1-ubyte(.gz)", "t10k-*-ubyte(.gz)"]
        where = (
            "https://yann.lecun.com/exdb/mnist/"
            if kind == "mnist"
            else "github.com/zalandoresearch/fashion-mnist"
        )
        _missing(cls.__name__, os.path.join(root, cls.__name__, "raw"), files, where)
    return ds.data.unsqueeze(1), ds.targets.long()


def _load_cifar10(root, download):
    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    if not all((folder / n).is_file() for n in names):
        from torchvision import datasets

        try:
            datasets.CIFAR10(root, train=True, download=download)
        except Exception:
            _missing("CIFAR-10", folder, names, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
        if not all((folder / n).is_file() for n in names):
            _missing("CIFAR-10", folder, names, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    images, labels = [], []
    for n in names:  # the python pickles, read directly: one array per file, no per-image work
        with open(folder / n, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images.append(torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch["labels"]))
    return torch.cat(images), torch.cat(labels).long()


def load_tensor_dataset(name, root, image_size, classes=None, download=True, in_turn=False):
    """MNIST, Fashion-MNIST or CIFAR-10 as (uint8 images N x C x S x S, int64 labels), resized once.

    in_turn (the training data, which every process loads at once under torchrun): the processes
    take turns (download_turn), so that one process per file system downloads; the others wait on
    the CPU (a gloo group of their own) for up to DATA_WAIT, not the process group's timeout."""
    if name not in ("mnist", "fashion-mnist", "cifar10"):
        raise ValueError(f"{name} is not a tensor dataset")
    load = _load_cifar10 if name == "cifar10" else partial(_load_mnist, name)
    rank, processes = process_share()
    if not in_turn or processes == 1:
        images, labels = load(root, download)
    else:
        waiting = torch.distributed.new_group(backend="gloo", timeout=DATA_WAIT)  # every process, at once
        mine = download_turn(rank, int(os.environ.get("LOCAL_RANK", "0")))
        for turn in range(3):
            if turn == mine:
                images, labels = load(root, download)
            torch.distributed.barrier(waiting)
        torch.distributed.destroy_process_group(waiting)
    if classes is not None:
        keep = torch.isin(labels, torch.as_tensor(list(classes)))
        images, labels = images[keep], labels[keep]
        if len(images) == 0:
            fail(f"{name} in {root} has no images of class(es) {list(classes)}")
    return resize_uint8(images, image_size).contiguous(), labels


def resize_uint8(images, size):
    """uint8 N x C x H x W images at size x size (bilinear, antialiased), as every loader here resizes."""
    if images.shape[-1] == size:
        return images
    resized = []
    for chunk in images.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
        resized.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(resized)


class TensorBatches:
    """Shuffled batches of a uint8 image tensor kept on the training device, scaled to [-1, 1].

    The order of epoch e depends only on (seed, e), so a run resumed mid-epoch sees the same
    batches as one that never stopped. A partial last batch is dropped (BatchNorm wants full
    batches), unless the data set is smaller than one batch.

    Under torchrun every process draws the same order and takes its own `batch` images of each
    global batch of processes x batch: batch i of process r is images order[(i P + r) b : (i P + r + 1) b],
    so an epoch is still one pass over the data, and P processes with batch b see exactly the
    images of one process with batch P b."""

    def __init__(self, images, batch, device, seed=0):
        self.rank, self.processes = process_share()
        self.images = images.to(device)
        self.batch = max(1, min(batch, len(images) // self.processes))
        self.seed = seed
        self.channels = images.shape[1]

    def __len__(self):
        return len(self.images) // (self.batch * self.processes)

    def batches(self, epoch, start=0):
        order = torch.randperm(
            len(self.images), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )
        order = order.to(self.images.device)
        for i in range(start, len(self)):
            first = (i * self.processes + self.rank) * self.batch
            idx = order[first : first + self.batch]
            yield self.images[idx].float().div_(127.5).sub_(1.0)


def list_images(folder):
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class BatchReader:
    """Real batches one after another across epochs. After `done` batches the next one is batch
    done % len(data) of epoch done // len(data), so a resumed run reads on exactly where it stopped;
    an epoch's end starts the next epoch, reshuffled. Batches come in `memory_format`."""

    def __init__(self, data, done=0, memory_format=torch.contiguous_format):
        self.data, self.done, self.memory_format, self.loader = data, done, memory_format, None

    def next(self):
        real = next(self.loader, None) if self.loader else None
        if real is None:
            n = len(self.data)
            self.loader = self.data.batches(self.done // n, self.done % n)
            real = next(self.loader)
        self.done += 1
        return real.contiguous(memory_format=self.memory_format)


class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder, nested or flat: resized (short side) and center-cropped to size."""

    def __init__(self, files, image_size, channels):
        from torchvision import transforms

        self.files = files
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.PILToTensor(),
            ]
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert(self.mode))


class FolderBatches:
    """Large image folders (CelebA, your own data) through a DataLoader with workers.

    Same interface, same resumable order and same share per process as TensorBatches; decoding
    happens in the workers."""

    def __init__(self, files, image_size, batch, device, seed=0, workers=None):
        from PIL import Image

        with Image.open(files[0]) as im:
            self.channels = 1 if im.mode in ("L", "LA", "I", "I;16", "1") else 3
        self.dataset = ImageFiles(files, image_size, self.channels)
        self.rank, self.processes = process_share()
        self.batch = max(1, min(batch, len(files) // self.processes))
        self.device = device
        self.seed = seed
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun's processes on this machine
        self.workers = max(1, min(8, (os.cpu_count() or 1) // per_machine)) if workers is None else workers

    def __len__(self):
        return len(self.dataset) // (self.batch * self.processes)

    def batches(self, epoch, start=0):
        order = torch.randperm(
            len(self.dataset), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )
        shares = order[: len(self) * self.batch * self.processes].view(len(self), self.processes, self.batch)
        order = shares[start:, self.rank].flatten().tolist()  # this process's share of batches start...
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch,
            sampler=order,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # its own generator: a DataLoader otherwise draws its workers' seed from the global RNG,
            # which would shift every later z of a resumed run
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )
        for x in loader:
            yield x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)


def _celeba_folder(root):
    """CelebA's aligned images: torchvision's layout (root/celeba/img_align_celeba) or a plain folder."""
    for candidate in (
        Path(root) / "celeba" / "img_align_celeba",
        Path(root) / "img_align_celeba",
        Path(root),
    ):
        if candidate.is_dir() and list_images(candidate)[:1]:
            return candidate
    fail(
        f"CelebA is not in {root}: put the aligned images (img_align_celeba/*.jpg, from "
        f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html or Kaggle's 'celeba-dataset') in "
        f"{Path(root) / 'celeba' / 'img_align_celeba'} and run again"
    )


def train_subset(count, n, seed, labels=None):
    """The indices (sorted) of the n of `count` training images a --train_images n run trains on.

    A random order drawn from `seed` alone, so a run, its resume and evaluate.py all pick the same
    images. With labels the classes take turns (the first image of each class in that order, then
    the second of each, ...), so every class has n / classes images, give or take one, where it has
    as many."""
    if n > count:
        fail(f"--train_images {n}: the training split has only {count} images")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    if labels is not None:  # rank of each image within its class, in that order: classes take turns
        shuffled = labels[order]
        turn = torch.zeros(count, dtype=torch.long)
        for c in shuffled.unique():
            where = (shuffled == c).nonzero()[:, 0]
            turn[where] = torch.arange(len(where))
        order = order[torch.sort(turn, stable=True).indices]
    return order[:n].sort().values


def training_images(args, classes=None):
    """The labelled training split (uint8 images, labels) a run trains on: all of it, or the
    --train_images subset, of `classes` only when given (the subset is drawn first, from every class)."""
    images, labels = load_tensor_dataset(args.dataset, args.data_root, args.image_size, in_turn=True)
    if getattr(args, "train_images", None):
        keep = train_subset(len(images), args.train_images, args.seed, labels)
        images, labels = images[keep], labels[keep]
    if classes is not None:
        keep = torch.isin(labels, torch.as_tensor(list(classes)))
        images, labels = images[keep], labels[keep]
        if len(images) == 0:
            fail(f"{args.dataset} in {args.data_root} has no training images of class(es) {list(classes)}")
    return images, labels


def make_batches(args, device, classes=None):
    """The training data chosen by --dataset, --data_root, --image_size, --train_images and --batch."""
    if args.dataset in ("mnist", "fashion-mnist", "cifar10"):
        images, _ = training_images(args, classes)
        return TensorBatches(images, args.batch, device, args.seed)
    if classes is not None:
        fail(f"--dataset {args.dataset} has no class labels")
    folder = _celeba_folder(args.data_root) if args.dataset == "celeba" else Path(args.data_root)
    files = list_images(folder)
    if not files:
        fail(f"--data_root {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below it")
    if getattr(args, "train_images", None):
        files = [files[i] for i in train_subset(len(files), args.train_images, args.seed).tolist()]
    return FolderBatches(files, args.image_size, args.batch, device, args.seed, args.workers)


# ---------------------------------------------------------------------------------------------
# Augmentation of what D sees
# ---------------------------------------------------------------------------------------------


class DiffAugment:
    """--augment: the same kind of random, differentiable transform on every image D sees.

    Zhao, Liu, Lin, Zhu, Han, "Differentiable Augmentation for Data-Efficient GAN Training",
    NeurIPS 2020, https://arxiv.org/abs/2006.10738. On small data D learns the real images by heart;
    if only the real images were augmented, G would learn to make augmented images. So real and
    generated images are transformed alike, in D's step and in G's (G learns through the transform,
    which is why it must be differentiable): D(augment(x)), D(augment(G(z))).

    Each image draws its own transform, from the run's random generator on the training device
    (saved in checkpoints, so resume stays exact); under torchrun each process draws its own share,
    as run.rand gives it. Images are in [-1, 1]; the three policies, with the paper's strengths:
    - color: brightness + U(-0.5, 0.5); saturation x U(0, 2) around each pixel's channel mean
      (colour images only: grey images have no saturation); contrast x U(0.5, 1.5) around the
      image's mean;
    - translation: a shift of up to 1/8 of the side in each direction, the uncovered border 0;
    - cutout: a square of half the side, anywhere (it may overhang the border), set to 0.
    'none' returns the images themselves.

    --augment_p p < 1: each image gets each transform with probability p (DiffAugment: always).
    --augment_p ada, the adaptive strength of ADA (Karras, Aittala, Hellsten, Laine, Lehtinen, Aila,
    "Training Generative Adversarial Networks with Limited Data", NeurIPS 2020, arXiv:2006.06676,
    section 3): p starts at 0; D's step hands its logits on the real images to observe(), and
    every ADA_INTERVAL G steps adapt() moves p by sign(r - 0.6) x (real images seen) / 500,000, where
    r = E[sign D(x_real)] since the last move (all processes' together). r near 1 says D calls
    nearly every training image real with confidence: it is learning them by heart. p, and the sums
    since the last move, are one tensor on the device (no host sync), saved in the checkpoint."""

    def __init__(self, policy, draw, p=1.0, device=None):
        self.policy = [] if policy == "none" else policy.split(",")
        self.draw = draw  # draw(n, *shape): uniform [0, 1) numbers on the device, this process's share
        self.adaptive = p == "ada"
        self.always = p == 1  # DiffAugment: no draw of whether to transform
        # p; ADA's sum of signs and count of real logits since p last moved
        self.state = torch.tensor([0.0 if self.adaptive else p, 0.0, 0.0], device=device)

    def __call__(self, x):
        for name in self.policy:
            if self.always:
                x = getattr(self, name)(x)
            else:  # each image its own coin: transformed with probability p
                chosen = self.draw(len(x), 1, 1, 1) < self.state[0]
                x = torch.where(chosen, getattr(self, name)(x), x)
        return x

    def observe(self, real_logits):
        """ADA: count D's signs on (augmented) real images; nothing unless --augment_p ada."""
        if self.adaptive:
            logits = real_logits.detach().float()
            self.state[1:] += torch.stack([logits.sign().sum(), logits.new_tensor(float(logits.numel()))])

    def all_seen(self):
        """The sum of signs and the count since p last moved, over all processes."""
        seen = self.state[1:].clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(seen)
        return seen

    def checkpoint_state(self):
        """p and every process's sums: the checkpoint of rank 0 is the whole run's (see Run)."""
        return torch.cat([self.state[:1], self.all_seen()])

    def adapt(self):
        """ADA: move p toward r = 0.6, with every process's signs (so all hold the same p)."""
        if not self.adaptive:
            return
        seen = self.all_seen()
        r = seen[0] / seen[1].clamp(min=1)
        move = torch.sign(r - ADA_TARGET) * seen[1] / ADA_IMAGES
        self.state.copy_(torch.stack([(self.state[0] + move).clamp(0, 1), seen[1] * 0, seen[1] * 0]))

    def color(self, x):
        n = len(x)
        x = x + (self.draw(n, 1, 1, 1) - 0.5)
        if x.shape[1] == 3:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (self.draw(n, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (self.draw(n, 1, 1, 1) + 0.5) + mean

    def translation(self, x, ratio=0.125):
        n, _, h, w = x.shape
        sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
        shift = self.draw(n, 2)
        dy = (shift[:, 0] * (2 * sh + 1)).long() - sh  # integers in [-sh, sh]
        dx = (shift[:, 1] * (2 * sw + 1)).long() - sw
        padded = F.pad(x, (sw, sw, sh, sh))  # zeros around; output pixel (i, j) reads (i - dy, j - dx)
        rows = torch.arange(h, device=x.device) + sh - dy[:, None]
        cols = torch.arange(w, device=x.device) + sw - dx[:, None]
        each = torch.arange(n, device=x.device)[:, None, None]
        picked = padded[each, :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2)  # indexing put the channels last: n x h x w x c

    def cutout(self, x, ratio=0.5):
        n, _, h, w = x.shape
        ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
        corner = self.draw(n, 2)
        top = (corner[:, 0] * (h + 1)).long() - ch // 2  # the square's centre anywhere in the image
        left = (corner[:, 1] * (w + 1)).long() - cw // 2
        rows = torch.arange(h, device=x.device) - top[:, None]
        cols = torch.arange(w, device=x.device) - left[:, None]
        inside = ((rows >= 0) & (rows < ch))[:, :, None] & ((cols >= 0) & (cols < cw))[:, None, :]
        return x * (~inside)[:, None].to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Output: logs, grids, GIFs, plots, PNG files
# ---------------------------------------------------------------------------------------------


class RunLog:
    """Losses summed on the device each step and read every `every` steps: one host sync per log row.

    Each row goes to log.csv (step, epoch, mean losses, images/s, elapsed seconds); a progress line
    goes to the console at most every `print_seconds`. A non-finite loss stops training with its step."""

    def __init__(
        self, out, total_steps, every, start_step=0, resume_elapsed=0.0, print_seconds=5.0, quiet=False
    ):
        self.path, self.quiet = Path(out) / "log.csv", quiet  # quiet: checks the losses, writes nothing
        self.total, self.every, self.print_seconds = total_steps, every, print_seconds
        self.first_step = start_step
        self.sums, self.count, self.images = {}, 0, 0
        self.first_bad = None  # the first step since the last row whose losses were not all finite
        self.elapsed0 = resume_elapsed
        self.start = self.mark = time.perf_counter()
        self.last_print = -math.inf
        self.fields = None

    def add(self, images, step=None, **losses):
        """One step's losses (device tensors), summed without a sync. With `step`, the first step whose
        losses are not all finite is kept on the device too, so a stop names that step, not the row's."""
        values = [v.detach().float() for v in losses.values()]
        for k, v in zip(losses, values):
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        if step is not None and values:
            finite = torch.stack([v.isfinite().all() for v in values]).all()
            if self.first_bad is None:
                self.first_bad = torch.full((), math.inf, device=values[0].device)
            self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        self.count += 1
        self.images += images

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.start

    def step(self, step, epoch, force=False, **extra):
        """Call after each generator step; writes a row every `every` steps (or when forced)."""
        if self.count == 0 or (step % self.every and not force and step != self.total):
            return None
        keys = list(self.sums)
        sums = [self.sums[k] for k in keys] + ([self.first_bad] if self.first_bad is not None else [])
        values = torch.stack(sums).cpu().tolist()  # the one sync
        row = {k: v / self.count for k, v in zip(keys, values)}
        for k, v in row.items():
            if not math.isfinite(v):
                bad = int(values[-1]) if self.first_bad is not None and math.isfinite(values[-1]) else step
                fail(f"{k} became {v} at step {bad}; stopped (the last checkpoint is left as it was)")
        now = time.perf_counter()
        rate = self.images / max(now - self.mark, 1e-9)
        row = {
            "step": step,
            "epoch": epoch,
            **row,
            **extra,
            "images_per_s": rate,
            "elapsed_s": self.elapsed(),
        }
        if not self.quiet:
            self._write(row)
        self.sums, self.count, self.images, self.mark = {}, 0, 0, now
        if self.quiet:
            return row
        if force or step == self.total or now - self.last_print >= self.print_seconds:
            self.last_print = now
            left = (self.total - step) * (self.elapsed() - self.elapsed0) / max(step - self.first_step, 1)
            losses = "  ".join(
                f"{k} {v:.4f}"
                for k, v in row.items()
                if k not in ("step", "epoch", "elapsed_s", "images_per_s")
            )
            print(
                f"epoch {epoch}  step {step}/{self.total}  {losses}  {rate:,.0f} img/s  "
                f"elapsed {_hms(self.elapsed())}  left {_hms(left)}",
                flush=True,
            )
        return row

    def _write(self, row):
        new = not self.path.exists() or self.path.stat().st_size == 0
        if self.fields is None:
            self.fields = list(row)
            if not new:
                with open(self.path) as f:
                    self.fields = next(csv.reader(f), self.fields)
        if not new and set(row) - set(self.fields):  # a column that starts later (fid): widen the file
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def truncate_log(out, step):
    """On resume: drop log rows written after the checkpoint's step (a run killed after its last save)."""
    path = Path(out) / "log.csv"
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(keep)


def read_log(out):
    path = Path(out) / "log.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def _hms(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(out, keys, path=None, title=None, log_y=False):
    """Plot the logged columns `keys` (lists of column names share one panel) against the step;
    log_y for a figure that falls by orders of magnitude (FID: thousands at the start, tens later)."""
    plt = pyplot()
    rows = read_log(out)
    if not rows:
        return
    panels = [k if isinstance(k, (list, tuple)) else [k] for k in keys]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for k in panel:
            points = [(r["step"], r[k]) for r in rows if k in r]  # fid exists at epoch ends only
            if points:
                ax.plot(*zip(*points), label=k, lw=1, marker="." if len(points) < 50 else None)
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3, which="both" if log_y else "major")
        if log_y:
            ax.set_yscale("log")
    axes[-1, 0].set_xlabel("generator step")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path or Path(out) / "losses.png", dpi=100)
    plt.close(fig)


def save_grid(images, path, nrow=8):
    """Save images in [-1, 1] (N x C x H x W) as one PNG grid."""
    from torchvision.utils import save_image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(images.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), padding=2)


def save_gif(frames, path, ms_per_frame=200):
    """An animation of the PNG files `frames` (the sample grids over training)."""
    from PIL import Image

    frames = [Path(f) for f in frames if Path(f).exists()]
    if not frames:
        return
    images = [Image.open(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


def interpolation_latents(z_from, z_to, steps=10):
    """Rows of a latent walk: row i goes from z_from[i] to z_to[i] in `steps` straight-line steps."""
    t = torch.linspace(0, 1, steps, device=z_from.device).view(1, steps, *[1] * (z_from.dim() - 1))
    walk = (1 - t) * z_from.unsqueeze(1) + t * z_to.unsqueeze(1)
    return walk.reshape(-1, *z_from.shape[1:])


def save_pngs(images, folder, start=0):
    """One PNG per image in [-1, 1], named 000000.png, 000001.png, ... (the format FID tools read)."""
    from torchvision.utils import save_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images.detach().float().cpu()):
        save_image(x, folder / f"{start + i:06d}.png", normalize=True, value_range=(-1, 1), padding=0)


def check_image_size(parser, size, smallest=16):
    """The DCGAN family doubles from 4 x 4: sizes that are 4 x a power of two."""
    if size < smallest or size & (size - 1):
        parser.error(
            f"--image_size {size}: must be a power of two, at least {smallest} (16, 32, 64, 128, ...)"
        )


# ---------------------------------------------------------------------------------------------
# The run: everything a training script does besides training
# ---------------------------------------------------------------------------------------------


def average_of(net):
    """A frozen copy of `net` to hold the exponential moving average of its weights (see ema_update)."""
    import copy

    return copy.deepcopy(net).requires_grad_(False)


@torch.no_grad()
def ema_update(average, net, decay, step):
    """average <- d * average + (1 - d) * net, d = min(decay, (1 + step) / (10 + step)).

    Yazici et al., "The Unusual Effectiveness of Averaging in GAN Training", ICLR 2019
    (https://arxiv.org/abs/1806.04498): G's weights keep circling the equilibrium; their average
    sits nearer to it, so it samples better than G at any step. The warm-up of d lets the average
    leave G's random start in the first hundred steps. BatchNorm statistics are copied, not
    averaged (cheap, and right for the grids during training); every figure, the last grid and
    --generate sample with statistics of the average's own (own_statistics). decay 0 makes the
    average G itself."""
    d = min(decay, (1 + step) / (10 + step))
    for a, p in zip(average.parameters(), net.parameters()):
        a.lerp_(p, 1 - d)
    for a, b in zip(average.buffers(), net.buffers()):
        a.copy_(b)


STATISTICS_SAMPLES = 4096  # own_statistics: a generator's BatchNorm statistics from this many samples


@contextlib.contextmanager
def own_statistics(nets, zdim, device, seed=0, samples=STATISTICS_SAMPLES, chunk=512):
    """Sample from each generator in `nets` with BatchNorm statistics of its own, then put back.

    ema_update averages G's weights over ~1/(1 - decay) steps but copies G's running statistics,
    which describe G's activations over its last ~10 batches, not the average's: in eval mode the
    average then normalizes with statistics that are not its own, and its samples change with
    which batches came last. Here each BatchNorm's statistics are recomputed from `samples` of
    the network's own outputs (batches of `chunk` in train mode, a cumulative average: the
    "standing statistics" of BigGAN, Brock et al. 2019, arXiv:1809.11096), from noise of its own
    generator (`seed`), so the run's random stream is untouched. On leaving, each network has
    its buffers and mode back: checkpoints and exact resume never see it."""
    norms = [m for net in nets for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        yield
        return
    kept = [(m, m.momentum, [b.clone() for b in m.buffers()]) for m in norms]
    modes = [(net, net.training) for net in nets]
    noise = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for net in nets:
                for m in net.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        m.momentum = None  # a cumulative average of every batch
                net.train()
                for start in range(0, samples, chunk):
                    net(torch.randn(min(chunk, samples - start), zdim, generator=noise).to(device))
                net.eval()
        yield
    finally:
        for m, momentum, buffers in kept:
            m.momentum = momentum
            for b, saved in zip(m.buffers(), buffers):
                b.copy_(saved)
        for net, training in modes:
            net.train(training)


def checksum(t):
    """The integer sum of a tensor's float32 bit patterns: equal exactly when the values are, whatever
    the order a device sums in (a float sum of the same weights can differ between two GPU models)."""
    return t.detach().float().view(torch.int32).sum(dtype=torch.int64)


def pinned(device):
    """Whether a tensor drawn on the CPU at each step goes to `device` from page-locked memory and
    without blocking: on a CUDA GPU, so the CPU queues on, where a copy from pageable memory would
    wait for the GPU to catch up (a host-device sync per copy)."""
    return device.type == "cuda"


class Autocast(torch.nn.Module):
    """A network whose forward pass runs under autocast (--amp) and hands back float32.

    The model's step functions stay plain float32 maths; parameters and state_dict are the wrapped
    network's own (this wrapper is never saved: checkpoints hold the networks themselves)."""

    def __init__(self, net, device_type, dtype):
        super().__init__()
        self.net, self.device_type, self.dtype = net, device_type, dtype

    def forward(self, *inputs):
        with torch.autocast(self.device_type, self.dtype):
            return self.net(*inputs).float()


class Run:
    """The plumbing of one training run, so that a model's train() shows its algorithm and no more.

    The model file, in order:
        run = Run(args, SCRIPT, SHAPE_FLAGS)       device, seed, CUDA settings, --resume checked
        run.track(G=G, D=D, opt_g=opt_g, ...)      what is saved; restored in place on --resume
        fast_G = run.fast(G)                       --compile / --amp, if asked for
        run.start(data, total, grid, sample=...)   the log, the position in the data, the console
        with run:                                  Ctrl-C: finish the step, then save
            while run.running():
                real = run.real_batch()            ... the paper's updates ...
                run.step_done(images, loss_d=..., loss_g=...)   log; grid + checkpoint each epoch
        run.finish([["loss_d", "loss_g"]])         last checkpoint, GIF, loss plot, latent walk
    and for --generate: run.track(G=G), then run.generate(sample, zdim).

    Everything in a checkpoint is what the model tracked plus: script, args, step, batches_done,
    epoch, elapsed, channels and the RNG state of the CPU and of the training device.

    Under torchrun (one process per GPU, or several on a CPU) the same file runs in every process:
    Run joins the process group, fast() wraps the networks in DistributedDataParallel (gradients
    averaged over the processes), the data gives each process its own share of every global batch,
    randn()/rand() give each its own share of one noise draw, BatchNorm statistics are averaged
    after each step, the processes agree on a stop, and only rank 0 prints and writes. Every
    process seeds alike, so all hold the same weights and the same random state: a checkpoint of
    rank 0 is the whole run (and resumes in any number of processes)."""

    def __init__(self, args, script, shape_flags, conv=True, auto_device=None, one_process=False):
        self.args, self.script = args, script
        if one_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            fail(f"{script} trains in one process: run it with python, not torchrun")
        if getattr(args, "compile", False) and getattr(args, "sync_bn", False):
            fail("--compile with --sync_bn: torch.compile fails on SyncBatchNorm under DDP; leave one out")
        # auto_device: a model too small for a GPU says "cpu" here (gan_gaussian)
        device = pick_device(auto_device if args.device == "auto" and auto_device else args.device)
        if getattr(args, "generate", None) and int(os.environ.get("RANK", "0")) > 0:
            raise SystemExit(0)  # --generate under torchrun: rank 0 writes them all, alone
        self.owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.device = start_processes(device) if not getattr(args, "generate", None) else device
        self.rank, self.processes = process_share()
        # Ctrl-C agreement goes over gloo on the CPU (a GPU tensor's .item() would wait for the GPU)
        self.control = cpu_group() if self.processes > 1 else None
        self.main = self.rank == 0  # the process that prints and writes
        seed_everything(args.seed)
        self.out = Path(args.out)
        self.ckpt = None
        if args.resume:
            self.ckpt = load_checkpoint_file(args.resume)
            check_checkpoint(self.ckpt, script, args, shape_flags)
        speed = hasattr(args, "deterministic")  # the image scripts' --amp, --compile, --deterministic
        self.memory_format = setup_backends(self.device, args, conv) if speed else torch.contiguous_format
        self.amp = amp_dtype(self.device, getattr(args, "amp", False))  # None: where bfloat16 is native
        self.things = {}
        self.own_averages = True  # own_statistics for the averages; a script may keep G's copied ones
        self.step = self.ckpt["step"] if self.ckpt else 0
        self.batches_done = self.ckpt.get("batches_done", 0) if self.ckpt else 0
        self.data, self.log, self._stop, self._stop_step = None, None, None, None
        self._save_due, self.stop_kind, self.saved_at, self.save_cost = 0, None, time.monotonic(), 0.0
        self.augmenters, self._augment = {}, None

    @property
    def augment(self):
        """The run's --augment, made at its first use: D(run.augment(x))."""
        if self._augment is None:
            self._augment = self.augmentation("augment")
        return self._augment

    @property
    def channels(self):
        """Image channels of the checkpoint's networks (for --generate, which reads no data)."""
        return self.ckpt.get("channels") or self.ckpt["image_shape"][0]  # image_shape: older checkpoints

    # -- noise -----------------------------------------------------------------------------------

    def randn(self, n, *shape, generator=None):
        """n standard normal draws of `shape` for this process (latent vectors z): every process
        draws processes x n alike and takes its own n, so the processes' z differ and P processes
        with batch n use the very z of one process with batch P n. One process: torch.randn(n, *shape).
        generator: a CPU torch.Generator to draw from instead of the global one (see pinned)."""
        if generator is None:
            z = torch.randn(self.processes * n, *shape, device=self.device)
        else:
            fast = pinned(self.device)
            z = torch.randn(self.processes * n, *shape, generator=generator, pin_memory=fast)
            z = z.to(self.device, non_blocking=fast)
        return z[self.rank * n : (self.rank + 1) * n]

    def rand(self, n, *shape):
        """n uniform [0, 1) draws of `shape` for this process, shared out as randn() does."""
        u = torch.rand(self.processes * n, *shape, device=self.device)
        return u[self.rank * n : (self.rank + 1) * n]

    def augmentation(self, name):
        """A DiffAugment of --augment and --augment_p; with ada, its p is saved as `name` and logged
        as `name`_p. A model with several D's (dcgan_classwise) makes one for each."""
        args = self.args
        policy, p = getattr(args, "augment", "none"), getattr(args, "augment_p", 1.0)
        augment = DiffAugment(policy, self.rand, p, self.device)
        if augment.adaptive and augment.policy:
            self.augmenters[name] = augment
            if self.ckpt is None or name in self.ckpt:
                self.track(**{name: augment.state})
                if self.rank:  # the saved sums are all processes': rank 0 carries them, exactly
                    augment.state[1:] = 0
            else:  # a checkpoint from a run without ada: p starts at 0 here
                self.things[name] = augment.state
        return augment

    # -- what is saved ---------------------------------------------------------------------------

    def track(self, **things):
        """Name the networks, optimizers, tensors (fixed noise) and CPU noise generators to save.

        On --resume each is restored in place from the checkpoint. An optimizer keeps this run's
        hyperparameters (--lr, --beta1, ...): only its state (moments, step counts) is restored."""
        self.things.update(things)
        if self.ckpt is None:
            return
        for name, thing in things.items():
            key = name
            if key not in self.ckpt and "_ema" in key and key.replace("_ema", "") in self.ckpt:
                key = key.replace("_ema", "")  # a checkpoint from before the average: start from the network
            if key not in self.ckpt:
                fail(f"--resume {self.args.resume}: no {key!r} in it (made by an older {self.script}?)")
            saved = self.ckpt[key]
            if isinstance(thing, torch.nn.Module):
                thing.load_state_dict(saved)
            elif isinstance(thing, torch.optim.Optimizer):
                flags = [{k: v for k, v in group.items() if k != "params"} for group in thing.param_groups]
                thing.load_state_dict(saved)
                for group, mine in zip(thing.param_groups, flags):
                    group.update(mine)
            elif isinstance(thing, torch.Generator):
                thing.set_state(saved)
            else:
                thing.copy_(saved)

    def _states(self):
        states = {}
        for name, thing in self.things.items():
            if isinstance(thing, (torch.nn.Module, torch.optim.Optimizer)):
                states[name] = thing.state_dict()
            elif isinstance(thing, torch.Generator):
                states[name] = thing.get_state()
            elif name in self.augmenters:  # every process calls save(): the sums of all of them
                states[name] = self.augmenters[name].checkpoint_state()
            else:
                states[name] = thing
        for name, state in (self.ckpt or {}).items():  # an ada state no step of this run has made yet
            if name not in states and (name == "augment" or name.startswith("augment_")):
                states[name] = state  # (a resume that stopped before its first D step): kept as it was
        return states

    def save(self):
        """The checkpoint, atomically; refused (the last one kept) if a network holds NaN or inf.
        Under torchrun every process checks that all hold the same weights, and rank 0 writes."""
        states = self._states()
        for name, thing in self.things.items():
            if isinstance(thing, torch.nn.Module):
                tensors = [t for t in states[name].values() if t.is_floating_point()]
                if tensors and not torch.stack([t.isfinite().all() for t in tensors]).all():
                    fail(
                        f"{name} has NaN or infinite weights at step {self.step}; stopped "
                        f"(the last checkpoint is left as it was)"
                    )
        start = time.monotonic()
        if self.processes > 1:
            self._check_same_weights(states)
        if not self.main:  # rank 0 keeps the clock: its saved_at and save_cost decide the next save
            return
        made = {"script": self.script, "args": vars(self.args), "step": self.step}
        made.update(batches_done=self.batches_done, epoch=self.epoch(), rng=rng_state(self.device))
        made.update(
            elapsed=self.log.elapsed() if self.log else 0.0, channels=getattr(self.data, "channels", None)
        )
        save_checkpoint(self.out / "checkpoint.pt", {**states, **made})
        self.saved_at = time.monotonic()
        self.save_cost = self.saved_at - start

    def _check_same_weights(self, states):
        """Every process must hold the same weights: compare a checksum of each tensor across them."""
        tensors = [
            t for name, thing in self.things.items() if isinstance(thing, torch.nn.Module)
            for t in states[name].values() if t.is_floating_point()
        ]  # fmt: skip
        if not tensors:
            return
        sums = torch.stack([checksum(t) for t in tensors])
        low, high = sums.clone(), sums.clone()
        torch.distributed.all_reduce(low, torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(high, torch.distributed.ReduceOp.MAX)
        if not torch.equal(low, high):
            fail(f"the {self.processes} processes hold different weights at step {self.step}; stopped")

    def _average_buffers(self):
        """BatchNorm's running statistics (and any float buffer) averaged over the processes after
        each step, so that every process samples alike; spectral norm's u, v are equal already."""
        buffers = [
            b for thing in self.things.values() if isinstance(thing, torch.nn.Module)
            for b in thing.buffers() if b.is_floating_point()
        ]  # fmt: skip
        if not buffers:
            return
        flat = torch.cat([b.flatten() for b in buffers])
        torch.distributed.all_reduce(flat)
        flat /= self.processes
        for b, mean in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(mean.view_as(b))

    # -- speed -----------------------------------------------------------------------------------

    def fast(self, net, compile=True):
        """The network the training steps call: compiled with --compile (unless compile=False),
        in DistributedDataParallel under torchrun, under autocast with --amp. It shares the
        network's parameters; checkpoints hold the network itself."""
        if compile and getattr(self.args, "compile", False):
            net = torch.compile(net)
        if self.processes > 1:
            net = distributed(net, self.device, getattr(self.args, "sync_bn", False))
        return Autocast(net, self.device.type, self.amp) if self.amp else net

    # -- the loop --------------------------------------------------------------------------------

    def start(self, data, total, grid=None, about=None, log_extra=None, sample=None, classes=None):
        """Begin (or continue) training on `data` for `total` generator steps (--max_steps caps it).

        grid(): images for the sample grid, saved each epoch (or --sample_every steps) with a
        checkpoint (or {subfolder: images}: one grid in each OUT/subfolder/samples/, one GIF in each).
        log_extra(): more columns for each log row (read only when a row is written).
        sample(z): images for latent vectors z; with it, an epoch's log row gets `fid`, the quality
        of 1,000 fixed samples, measured against `classes` of the data: at the first epoch's end,
        then at each epoch's end once 32 times the last measurement's cost has passed (so under ~3%
        of the run: every epoch on full data sets, every few on small ones), and at the last step."""
        self.data, self.grid, self.log_extra, self.sample = data, grid, log_extra, sample
        self.reader = BatchReader(data, self.batches_done, self.memory_format)
        self.quality = self._quality_meter(sample, classes) if sample and self.main else None
        self.quality_due = 0.0
        args = self.args
        self.total = min(total, args.max_steps) if args.max_steps else total
        if self.ckpt:
            set_rng_state(self.ckpt["rng"], self.device)
            if self.main:
                truncate_log(self.out, self.step)
                print(f"resumed from {args.resume} at step {self.step}")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        elapsed = self.ckpt["elapsed"] if self.ckpt else 0.0
        self.log = RunLog(self.out, self.total, args.log_every, self.step, elapsed, quiet=not self.main)
        self.last_epoch, self.grid_at, self.grid_folders = self.epoch(), self.step, {self.out}
        about = about or f"{args.dataset}, {len(data)} batches of {data.batch} per epoch"
        amp = " (bfloat16 autocast; --no-amp for float32)" if self.amp else ""
        where = f"{self.device}, {self.processes} processes" if self.processes > 1 else f"{self.device}"
        auto = ""
        if getattr(args, "resumed_auto", None) is not None:  # --resume auto says what it found
            found = f"resumed at step {self.step}" if self.ckpt else "no checkpoint, a fresh start"
            auto = f"; --resume auto: {found}"
        if self.main:
            print(f"{self.script}: {about}, {self.total} steps on {where}{amp}{auto}", flush=True)
        self.saved_at = time.monotonic()  # --save_minutes counts from here

    def epoch(self):
        return self.batches_done // len(self.data) if self.data else 0

    def __enter__(self):
        self._stop = StopRequest(verbose=self.main, repeat_aborts=self.processes == 1).__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:  # the loop ended: Ctrl-C stays a request until end(), through the last save
            return False  # (under torchrun a process's own signal can come after the others agreed)
        return self._stop.__exit__(*exc)

    def running(self):
        """True while there are steps left and nobody pressed Ctrl-C (or sent SIGTERM)."""
        return self.step < self.total and not self._stopping()

    def _stopping(self):
        """Ctrl-C seen here, or under torchrun in any process: all stop after the same step.

        The same agreement carries rank 0's clock (2: a --save_minutes save is due; 1: a checkpoint
        with the next grid is cheap, SAVE_SHARE x the last one's cost has passed) and the kind of
        stop (SIGTERM, which ends with EXIT_PREEMPTED, beats Ctrl-C), so all processes save at the
        same step and exit alike. One process reads its own flag at every call."""
        seen = self._stop.signal if self._stop and self._stop.requested else 0
        if self._stop_step != self.step or self.processes == 1:
            flags = [2.0 if seen == signal.SIGTERM else float(bool(seen)), self._save_due]
            if self._stop_step != self.step:  # rank 0's clock, once per step
                minutes, since = getattr(self.args, "save_minutes", 0) or 0, time.monotonic() - self.saved_at
                clock, cheap = minutes > 0 and since >= minutes * 60, since >= SAVE_SHARE * self.save_cost
                flags[1] = (2.0 if clock else 1.0 if cheap else 0.0) if self.main else 0.0
                if self.processes > 1:  # on the CPU, once per step: no wait for the GPU
                    flag = torch.tensor([float(f) for f in flags])
                    torch.distributed.all_reduce(flag, torch.distributed.ReduceOp.MAX, group=self.control)
                    flags = flag.tolist()
            self._stop_step, self._stop_agreed, self._save_due = self.step, flags[0] > 0, int(flags[1])
            self.stop_kind = "SIGTERM" if flags[0] == 2 else "stop" if flags[0] else None
        return self._stop_agreed

    def real_batch(self):
        """The next real batch (in the training memory format); an epoch's end starts the next, reshuffled."""
        real = self.reader.next()
        self.batches_done = self.reader.done
        return real

    def step_done(self, images, **losses):
        """After each generator update: log the losses; at an epoch's end, a grid and a checkpoint.

        The checkpoint goes with a grid while it costs under ~3% of the time since the last one: at
        every epoch's end unless epochs are short and checkpoints large (a few hundred images on a GPU,
        one DCGAN pair per class), then every few. --save_minutes saves between; the last step saves."""
        self.step += 1
        if self.processes > 1:
            self._average_buffers()
        for name, augment in self.augmenters.items():  # --augment_p ada
            if self.step % ADA_INTERVAL == 0:
                augment.adapt()
            losses[f"{name}_p"] = augment.state[0].clone()  # adapt() changes state in place
        self.log.add(
            images * self.processes, self.step, **losses
        )  # images/s of all processes; rank 0's losses
        epoch, every = self.epoch(), getattr(self.args, "sample_every", None)
        new_epoch, last = epoch > self.last_epoch, not self.running()
        saving = new_epoch or (every and self.step % every == 0)
        # with a grid while cheap, or on the clock (--save_minutes); finish() saves the last step
        checkpoint = not last and (saving and self._save_due >= 1 or self._save_due == 2)
        # a forced row before a save: the losses are checked finite before they are saved
        measure = last or (new_epoch and self.log.elapsed() >= self.quality_due)
        self._log_row(force=saving or checkpoint or last, **(self._fid() if measure else {}))
        if saving:
            self._save_grids(f"epoch_{epoch:04d}" if new_epoch else f"step_{self.step:06d}", own=last)
            self.last_epoch = epoch
        if checkpoint:
            self.save()

    def _save_grids(self, name, own=False):
        """grid() gives the images of OUT/samples/NAME.png, or {subfolder: images} for several grids.
        own: the last grid, sampled with the averages' own BatchNorm statistics (own_statistics); the
        grids before it keep the statistics copied from G, which cost nothing."""
        if not self.grid or not self.main:
            return
        with self.own_statistics() if own else contextlib.nullcontext():
            images = self.grid()
        for sub, x in images.items() if isinstance(images, dict) else [("", images)]:
            save_grid(x, self.out / sub / "samples" / f"{name}.png")
            self.grid_folders.add(self.out / sub)
        self.grid_at = self.step

    def _log_row(self, force=False, **fid):
        due = force or self.step % self.log.every == 0 or self.step == self.total
        extra = self.log_extra() if self.log_extra and due and self.log.count else {}
        self.log.step(self.step, self.epoch(), force=force, **extra, **fid)

    def _quality_meter(self, sample, classes):
        """The quality figure over training: evaluate.py's classifier FID of 1,000 samples from fixed
        noise. Only when evaluate.py stands beside common.py (a script copied alone trains without it)."""
        args, path = self.args, Path(__file__).with_name("evaluate.py")
        if not getattr(args, "quality", False):
            return None
        if not path.is_file():
            print(f"note: no {path.name} beside {Path(__file__).name}: training without the quality figure")
            return None
        spec = importlib.util.spec_from_file_location("evaluate", path)
        evaluate = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(evaluate)
        with torch.random.fork_rng(devices=[]):  # the run's random stream is the same with or without it
            meter = evaluate.quality_meter(
                args.dataset, args.data_root, args.image_size, self.data.channels, self.device, 1000, classes
            )
        if meter is None:
            return None
        z = torch.randn(1000, args.zdim, generator=torch.Generator().manual_seed(args.seed + 2))

        def measure():  # a generator gone NaN has no FID: the loss check then stops the run
            images = sample(z.to(self.device))
            return meter(images) if images.isfinite().all() else math.nan

        return measure

    def _fid(self):
        if not self.quality:
            return {}
        start = time.perf_counter()
        with self.own_statistics():
            fid = self.quality()
        cost = time.perf_counter() - start
        self.log.start += cost  # not training time: elapsed_s leaves it out
        # at most ~3% of the run: the next epoch's end is measured once 32 x this cost has passed
        self.quality_due = self.log.elapsed() + 32 * cost
        return {"fid": fid}

    def finish(self, losses=(), title=None, walk=True):
        """The last log row and checkpoint, the last grid, progress.gif, losses.png, interpolation.png."""
        self._log_row(force=True)
        self.save()
        stopped = self._stopping()
        if not self.main:
            self.end()
            return self.exit_if_preempted(stopped)
        if self.grid_at != self.step:
            self._save_grids(f"step_{self.step:06d}", own=True)
        for folder in self.grid_folders:
            grids = sorted((folder / "samples").glob("*.png"), key=lambda p: p.stat().st_mtime)
            save_gif(grids, folder / "progress.gif")
        if losses:
            plot_losses(self.out, losses, title=title or self.script)
        if any("fid" in r for r in read_log(self.out)):
            quality = "classifier FID of 1,000 fixed samples (lower is better)"
            heading = f"{self.script}: {quality}"
            plot_losses(self.out, ["fid"], path=self.out / "quality.png", title=heading, log_y=True)
        if self.sample and walk:
            noise = torch.Generator().manual_seed(self.args.seed + 1)
            ends = torch.randn(2, 8, self.args.zdim, generator=noise).to(self.device)
            with self.own_statistics():
                images = self.sample(interpolation_latents(ends[0], ends[1], 10))
            save_grid(images, self.out / "interpolation.png", nrow=10)
        print(f"{'stopped' if stopped else 'done'} at step {self.step}; outputs in {self.out}")
        self.end()
        self.exit_if_preempted(stopped)

    def own_statistics(self, nets=None):
        """with run.own_statistics(): what is sampled inside comes from the averages (every tracked
        G_ema, or `nets`) with BatchNorm statistics of their own; see own_statistics."""
        if not self.own_averages:  # the script samples its average on the statistics copied from G
            return contextlib.nullcontext()
        if nets is None:
            nets = [net for k, net in self.things.items() if k.startswith("G_ema")]
        zdim = getattr(self.args, "zdim", None)
        return own_statistics(nets, zdim, self.device, seed=self.args.seed + 3)

    def exit_if_preempted(self, stopped):
        """A run stopped by SIGTERM (a scheduler's preemption) before its last step exits with
        EXIT_PREEMPTED once all is saved, so that a requeue can tell "not finished" from "done"."""
        if stopped and self.stop_kind == "SIGTERM" and self.step < self.total:
            if self.main:
                print(
                    f"SIGTERM: exit status {EXIT_PREEMPTED}; run the same command with --resume auto to go on"
                )
            raise SystemExit(EXIT_PREEMPTED)

    def end(self):
        """Under torchrun: wait for every process (rank 0 writes last), then leave the process group."""
        if self.processes > 1 and torch.distributed.is_initialized():
            # on the CPU group: an NCCL barrier, not told the GPU by device_id, warns or guesses it
            torch.distributed.barrier(self.control)
            if self.owns_group:  # a group made by the caller (e.g. a benchmark's many runs) stays
                torch.distributed.destroy_process_group()
        if getattr(self, "_stop", None):  # Ctrl-C and SIGTERM as they were before the run
            self._stop.__exit__(None, None, None)

    # -- --generate ------------------------------------------------------------------------------

    def generate(self, sample, zdim, folder=None, seed=None, chunk=500, nets=None):
        """--generate N: N images from the tracked G as PNGs, written `chunk` at a time, with its own
        BatchNorm statistics (own_statistics; nets: which generators, default every tracked G_ema)."""
        n, folder = self.args.generate, Path(folder or self.out / "generated")
        if not self.main:  # under torchrun, rank 0 writes them all
            return self.end()
        noise = torch.Generator().manual_seed(self.args.seed if seed is None else seed)
        with self.own_statistics(nets):
            for start in range(0, n, chunk):
                z = torch.randn(min(chunk, n - start), zdim, generator=noise)
                save_pngs(sample(z.to(self.device)), folder, start)
        print(f"wrote {n} images to {folder}")
        self.end()
