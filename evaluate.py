"""Sample quality of a GAN: FID, KID, precision/recall and class scores of a folder of images or a checkpoint.

Metrics (all from torch-fidelity's arithmetic, computed on feature vectors of the generated ("fake")
and real images):

- fid: Frechet distance between Gaussians fitted to the two sets of features,
  ||mu_f - mu_r||^2 + tr(S_f + S_r - 2 (S_f S_r)^(1/2)). Heusel, Ramsauer, Unterthiner, Nessler,
  Hochreiter, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
  NeurIPS 2017. https://arxiv.org/abs/1706.08500. Lower is better; biased upward for small N,
  so compare figures made with the same number of images.
- kid, kid_std: Kernel distance (unbiased squared MMD, kernel (x.y / D + 1)^3), mean and standard
  deviation over 100 random subsets of min(1000, N / 2) images. Binkowski, Sutherland, Arbel,
  Gretton, "Demystifying MMD GANs", ICLR 2018. https://arxiv.org/abs/1801.01401. Unbiased: near 0
  (it can be slightly negative) for two samples of one distribution. The kernel was made for
  Inception's features, whose entries are mostly below 1; in classifier space the features are
  divided by their RMS over the training images first, so the kernel sees the same scale.
- precision, recall: the share of fake images inside the real images' manifold (the union of
  balls reaching each real image's 3rd nearest real neighbour), and of real images inside the
  fake images' manifold. Kynkaanniemi, Karras, Laine, Lehtinen, Aila, "Improved Precision and
  Recall Metric for Assessing Generative Models", NeurIPS 2019. https://arxiv.org/abs/1904.06991.
  Low precision: images unlike the data; low recall: missing variety (mode collapse).
- class_confidence (classifier space only): the mean over fake images of the classifier's largest
  softmax probability: the "each image looks like one definite class" half of the Inception
  Score (Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen, "Improved Techniques for Training
  GANs", NeurIPS 2016, https://arxiv.org/abs/1606.03498). 1 is best.
- class_coverage (classifier space only): the other half, "all classes appear": the fraction of
  the data set's classes that receive at least half their fair share of the fake images, a class's
  fair share being its share of the real training images (10% for the balanced data sets here).
  The classifier's argmax labels each fake image. 1 is best; 0.1 means one class only.
- fid_held_out: the FID against real images no run trained on (the test split; for a
  --train_images run without one, the training images it left out), beside fid against the
  training images. A model that learns the training set by heart scores better on fid than on
  fid_held_out.
- copy_share: are the samples copies? The share of fake images that lie closer (pixel L2
  distance) to their nearest training image than the median held-out real image lies to its
  own. Held-out real images score 0.5 by construction; a model that returns its training images
  scores 1; a model whose samples are new but as close to the data as real images are, 0.5.
  Nearest among the real images compared (all training images when there are at most --n).
- inception_score, inception_score_std (inception space only): Salimans et al.'s score on
  Inception-v3's 1008 logits, 10 splits.

Two feature spaces (--features):

- classifier (default for mnist, fashion-mnist, cifar10): the 128-d penultimate layer (after its
  ReLU) of a small CNN (two 5x5 stride-2 convs of 32 and 64 filters, dropout 0.25, a 128-unit
  layer, 10 logits) that this file trains on the data set's labelled training split at the data
  set's own size (28 x 28 for MNIST and Fashion-MNIST, 32 x 32 for CIFAR-10; other sizes are
  resized to it, bilinear with antialias). Deterministic: seed 0, Adam 1e-3, batch 128,
  round(60,000 / N) epochs clamped to 2..30 (2 epochs of MNIST's 60,000 digits, 15 of a
  4,000-digit subset), on one CPU thread whatever the machine, so every machine trains the same
  network. Its held-out accuracy (on
  the test split, or on a tenth of the training split held out when there is none) is printed
  when it is trained and when it is loaded. Cached in DATA_ROOT/evaluate_classifier_<dataset>.pt,
  or, when DATA_ROOT is not writable (its permission bits say so, even for root), in
  ~/.cache/gan-collection/evaluate_classifier_<dataset>_<hash of DATA_ROOT's absolute path>.pt.
  A cache made from other data (another number of images per class) is retrained. Fast and
  sharp on these small data sets; its figures are comparable only with its own.
- inception (default for celeba and folder): torch-fidelity's inception-v3-compat, the network
  of the papers (2048-d pool features; 1008 logits for the Inception Score), so CIFAR-10 and
  CelebA figures compare with published ones (those use 50,000 images: --n 50000). Grey images
  are repeated to 3 channels. Its weights download once to torch hub's checkpoints folder.

Generated images: PATH is a folder (up to N of its images, a subset chosen by --seed), or a
checkpoint: the script named in it (beside this file) writes N samples with --generate into a
temporary folder (dcgan_classwise.py: N / classes, rounded up, for each class). Real images: the data set's
training split (common.load_tensor_dataset, or every image under DATA_ROOT for celeba/folder) at
the generated images' size, so both sets go through the same resize path; up to N of them, a
subset chosen by --seed; only the classes of --classes, or of the checkpoint's --classes/--digit.

The training scripts' quality figure: quality_meter(...) builds once, then measure(images) gives
the classifier FID of float images in [-1, 1] against every training image's statistics.

Examples:
    python evaluate.py runs/dcgan/checkpoint.pt --data_root ./data          # generates 10,000 itself
    python evaluate.py runs/dcgan/generated --dataset mnist --data_root ./data --n 1000 --json
    python evaluate.py runs/dcgan_cifar/checkpoint.pt --features inception --n 50000 --device cuda

Needs torch-fidelity: pip install -r requirements-eval.txt
"""

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common

HERE = Path(__file__).resolve().parent
LABELLED = ("mnist", "fashion-mnist", "cifar10")
CLASSIFIER_SIZE = {"mnist": 28, "fashion-mnist": 28, "cifar10": 32}
CLASSES = 10
CLASSIFIER_VERSION = 1  # bump when the network or its training changes: older caches are retrained
INSTALL = "pip install -r requirements-eval.txt"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


def fidelity():
    """torch-fidelity's metric modules, or None when it is not installed (it is optional)."""
    try:
        from torch_fidelity import metric_fid, metric_isc, metric_kid, metric_prc
    except ImportError:
        return None
    return metric_fid, metric_kid, metric_prc, metric_isc


def need_fidelity():
    modules = fidelity()
    if modules is None:
        common.fail(f"evaluate.py needs torch-fidelity: {INSTALL}")
    return modules


# -- The metric arithmetic: torch-fidelity's functions on feature tensors ------------------------------
def gaussian(features):
    """Mean and covariance of N x D features (float64), as FID fits them."""
    return need_fidelity()[0].fid_features_to_statistics(features.detach().double().cpu())


def frechet_distance(stats_1, stats_2):
    """FID between two {"mu", "sigma"} Gaussians (torch-fidelity's formula, TTUR's reference code)."""
    out = need_fidelity()[0].fid_statistics_to_metric(stats_1, stats_2, verbose=False)
    return out["frechet_inception_distance"]


def compare(fake, real, seed=0, kid_scale=1.0):
    """fid, kid, kid_std, precision, recall of fake against real features (N x D tensors).

    KID's kernel (x.y / D + 1)^3 was made for Inception's features, whose entries are below 1; the
    classifier's are larger, so its KID sees them divided by kid_scale (their RMS on training images)."""
    _, metric_kid, metric_prc, _ = need_fidelity()
    fake, real = fake.detach().double().cpu(), real.detach().double().cpu()
    size = min(1000, len(fake) // 2, len(real) // 2)  # half of a small set, so that subsets differ
    kid = metric_kid.kid_features_to_metric(
        fake / kid_scale, real / kid_scale, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    # save_cpu_ram: distances a block of rows at a time (same result), so 50,000 images fit in memory
    prc = metric_prc.prc_features_to_metric(fake, real, prc_batch_size=2000, save_cpu_ram=True, verbose=False)
    return {
        "fid": frechet_distance(gaussian(fake), gaussian(real)),
        "kid": kid["kernel_inception_distance_mean"],
        "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"],
        "recall": prc["recall"],
    }


def class_scores(probs, real_labels, classes):
    """class_confidence and class_coverage (see the docstring) of fake images' class probabilities."""
    fair = torch.bincount(real_labels, minlength=classes).double() / len(real_labels)
    share = torch.bincount(probs.argmax(1), minlength=classes).double() / len(probs)
    present = fair > 0  # a model trained on some classes (--classes, --digit) is judged on those
    return {
        "class_confidence": probs.double().max(1).values.mean().item(),
        "class_coverage": (share[present] >= fair[present] / 2).double().mean().item(),
    }


# -- Feature space 1: a small classifier trained here ---------------------------------------------------
class Classifier(nn.Module):
    """Two strided 5x5 convs and a 128-unit layer (the features), then the class logits."""

    def __init__(self, channels, size, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, 2, 2),  # size / 2
            nn.ReLU(),
            nn.Conv2d(32, 64, 5, 2, 2),  # size / 4
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(64 * math.ceil(size / 4) ** 2, 128),
            nn.ReLU(),
        )
        self.logits = nn.Linear(128, classes)
        self.size = size
        # RMS of the training images' features: KID divides by it (see compare)
        self.register_buffer("feature_rms", torch.ones(()))

    def forward(self, x):
        return self.logits(self.features(x))


def to_input(images, size):
    """uint8 images (0..255) or float images in [-1, 1], as floats in [-1, 1] at size x size."""
    x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@contextlib.contextmanager
def one_thread():
    """The classifier's CPU work on one thread (the caller's setting restored after): the same sums
    in the same order on every machine, and faster here: these small convolutions gain little from
    threads, and on a shared 2-core CPU two threads waiting on each other trained 7-30x slower and
    measured 1,000 images 4x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def full_float32():
    """cuDNN's convolutions in full float32 (on Ampere and later GPUs PyTorch lets them round to TF32 by
    default, about 1e-3 relative): the classifier's features on a GPU are then the CPU's, to float32
    rounding, and so are the FIDs made of them."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@torch.no_grad()
def classifier_outputs(net, images, batch=1000):
    """Penultimate features (N x 128) and class probabilities of images, on the network's device."""
    device = next(net.parameters()).device
    feats, probs = [], []
    with one_thread(), full_float32():
        for chunk in images.split(batch):
            h = net.features(to_input(chunk.to(device), net.size))
            feats.append(h.cpu())
            probs.append(net.logits(h).softmax(1).cpu())
    return torch.cat(feats), torch.cat(probs)


def accuracy(net, images, labels):
    return (classifier_outputs(net, images)[1].argmax(1) == labels).double().mean().item()


def held_out_split(dataset, root):
    """The data set's test split as (uint8 images, labels), or None when it is not on disk."""
    if dataset == "cifar10":
        path = Path(root) / "cifar-10-batches-py" / "test_batch"
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        images = torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32)
        return images, torch.as_tensor(batch["labels"]).long()
    from torchvision import datasets

    cls = datasets.MNIST if dataset == "mnist" else datasets.FashionMNIST
    try:
        ds = cls(root, train=False, download=False)
    except Exception:  # torchvision's error when the files are missing; the caller holds out its own
        return None
    return ds.data.unsqueeze(1), ds.targets.long()


def train_classifier(dataset, root, epochs=None, seed=0):
    """Train the feature network on the labelled training split; returns it and what to cache."""
    images, labels = common.load_tensor_dataset(dataset, root, CLASSIFIER_SIZE[dataset])
    counts = torch.bincount(labels, minlength=CLASSES).tolist()  # what the cache is checked against
    held = held_out_split(dataset, root)
    if held is None:  # no test split: a tenth of the training images, chosen by the seed
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        cut = len(images) // 10
        held = images[order[:cut]], labels[order[:cut]]
        images, labels = images[order[cut:]], labels[order[cut:]]
        about = f"{cut:,} held-out training images"
    else:
        about = f"the {len(held[0]):,} test images"
    epochs = epochs or min(30, max(2, round(60_000 / len(images))))
    start = time.perf_counter()
    # init and dropout draw from the global CPU generator: forked, so the caller's stream stays as it was
    # (the CPU's alone: torch.manual_seed would also reseed a training GPU's generator mid-run)
    with torch.random.fork_rng(devices=[]), one_thread():
        torch.random.default_generator.manual_seed(seed)
        net = Classifier(images.shape[1], CLASSIFIER_SIZE[dataset], CLASSES)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        shuffle = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for idx in torch.randperm(len(images), generator=shuffle).split(128):
                loss = F.cross_entropy(net(to_input(images[idx], net.size)), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    seconds = time.perf_counter() - start
    net.feature_rms.fill_(classifier_outputs(net, images)[0].pow(2).mean().sqrt().item())
    info = {
        "version": CLASSIFIER_VERSION,
        "dataset": dataset,
        "channels": images.shape[1],
        "label_counts": counts,
        "n_train": len(images),
        "accuracy": accuracy(net, *held),
        "held_out": about,
        "epochs": epochs,
        "seconds": seconds,
    }
    return net, info


def writable(folder):
    """True if we may write in folder: the OS allows it and its permission bits do (root ignores them)."""
    folder = Path(folder)
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def classifier_cache(dataset, root):
    """Where the classifier of (dataset, root) is cached: beside the data, or in ~/.cache/gan-collection."""
    beside = Path(root) / f"evaluate_classifier_{dataset}.pt"
    if beside.is_file() or writable(root):
        return beside
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan-collection"
    return cache / f"evaluate_classifier_{dataset}_{key}.pt"


def load_classifier(dataset, root, device="cpu", train_labels=None, epochs=None):
    """The cached classifier of (dataset, root), trained first if there is none (or it is stale).

    train_labels: the training split's labels, if the caller has them, to check that the cache was
    made from this data (same number of images per class). Returns (network on device, info)."""
    if dataset not in LABELLED:
        common.fail(f"--features classifier needs labelled data ({', '.join(LABELLED)}), not {dataset}")
    path = classifier_cache(dataset, root)
    counts = None if train_labels is None else torch.bincount(train_labels, minlength=CLASSES).tolist()
    net, info = cached_classifier(path, dataset, counts)
    if net is not None:
        print(
            f"evaluation classifier: loaded {path} "
            f"(held-out accuracy {info['accuracy']:.4f} on {info['held_out']})"
        )
    else:
        net, info = train_classifier(dataset, root, epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        torch.save({**info, "state_dict": net.state_dict()}, tmp)
        os.replace(tmp, path)  # atomic: a killed run leaves no half-written cache
        print(
            f"evaluation classifier: trained on {info['n_train']:,} {dataset} images "
            f"in {info['seconds']:.1f} s ({info['epochs']} epochs), held-out accuracy "
            f"{info['accuracy']:.4f} on {info['held_out']}; saved to {path}"
        )
    return net.to(device).requires_grad_(False), info


def cached_classifier(path, dataset, counts=None):
    """(network, info) saved at path, or (None, None) when there is none, or it is unreadable or was
    made by other code (version) or from other data (counts: training images per class, if known)."""
    if not path.is_file():
        return None, None
    try:
        info = torch.load(path, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the caller's RNG be
            net = Classifier(info["channels"], CLASSIFIER_SIZE[dataset], CLASSES)
        net.load_state_dict(info.pop("state_dict"))
        if info["version"] == CLASSIFIER_VERSION and counts in (None, info["label_counts"]):
            return net.eval(), info
    except Exception:  # a truncated file or another layout: train a new one
        pass
    print(f"evaluation classifier: {path} is unreadable or from other data or code; training a new one")
    return None, None


# -- Feature space 2: Inception-v3 as the papers use it -------------------------------------------------
def inception_weights():
    """The file of Inception-v3's weights where torch-fidelity looks for it (torch hub's checkpoints
    folder), downloaded on first use; without network, a one-line stop saying what to put where."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=False)
        except Exception as e:  # URLError, OSError, ... whatever the missing network raises
            common.fail(
                f"Inception-v3 weights could not be downloaded ({type(e).__name__}: no network?): "
                f"fetch {INCEPTION_URL} and put it at {path}"
            )
    return path


def inception_network(device):
    """torch-fidelity's inception-v3-compat, giving 2048-d pool features and 1008 logits."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = inception_weights()
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], str(path))
    except Exception as e:
        common.fail(f"{path} holds no Inception-v3 weights ({type(e).__name__}): delete it and run again")
    return net.to(device)


@torch.no_grad()
def inception_outputs(net, images, device, batch=64):
    """2048-d pool features and 1008 logits of uint8 images (grey ones repeated to 3 channels)."""
    feats, logits = [], []
    for chunk in images.split(batch):
        chunk = chunk.to(device)
        f, lg = net(chunk.expand(-1, 3, -1, -1) if chunk.shape[1] == 1 else chunk)
        feats.append(f.cpu())
        logits.append(lg.cpu())
    return torch.cat(feats), torch.cat(logits)


# -- Images: a folder, a checkpoint's samples, the real data --------------------------------------------
def subset(count, n, seed):
    """Indices of n of count items (all of them, in order, when count <= n), chosen by seed."""
    if count <= n:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def read_images(folder, channels, n, seed=0, size=None):
    """Up to n images under folder (nested), uint8 N x channels x S x S: resized (short side) and
    center-cropped to size, or to the first image's short side (generated images are all one size)."""
    files = common.list_images(folder)
    if not files:
        common.fail(f"{folder}: no images ({', '.join(common.IMAGE_EXTENSIONS)}) in this folder or below it")
    return read_files(files, channels, n, seed, size)


def read_files(files, channels, n, seed=0, size=None):
    """Up to n of these image files, chosen by seed, as read_images reads them."""
    files = [files[i] for i in subset(len(files), n, seed).tolist()]
    if size is None:
        from PIL import Image

        with Image.open(files[0]) as im:
            size = min(im.size)
    data = common.ImageFiles(files, size, channels)
    # CelebA-sized folders decode in worker processes; a few thousand PNGs are quicker without
    workers = min(4, os.cpu_count() or 1) if len(files) > 2000 else 0
    return torch.cat(list(torch.utils.data.DataLoader(data, batch_size=256, num_workers=workers)))


def real_images(dataset, root, size, channels, n, seed=0, classes=None, trained=None):
    """Up to n training images at size x size (of `classes` only, if given), chosen by seed, and
    the labels of every training image (None for unlabelled data). trained: (N, run seed) of a
    --train_images N run: only the N images it trained on are its training images."""
    if dataset in LABELLED:
        images, labels = common.load_tensor_dataset(dataset, root, size)
        if trained:
            keep = common.train_subset(len(images), trained[0], trained[1], labels)
            images, labels = images[keep], labels[keep]
        pool = torch.arange(len(images)) if classes is None else in_classes(labels, classes).nonzero()[:, 0]
        if len(pool) == 0:
            common.fail(f"{dataset} in {root} has no images of class(es) {list(classes)}")
        return images[pool[subset(len(pool), n, seed)]], labels
    files = common.list_images(common._celeba_folder(root) if dataset == "celeba" else root)
    if trained:
        files = [files[i] for i in common.train_subset(len(files), *trained).tolist()]
    return read_files(files, channels, n, seed, size), None


def held_out_images(dataset, root, size, channels, n, seed=0, classes=None, trained=None):
    """Up to n real images no run trained on, at size x size, or None: the test split where the data
    set has one on disk; else, for a --train_images run, the training images it left out."""
    held = held_out_split(dataset, root) if dataset in LABELLED else None
    if held is not None:
        images, labels = held
        if classes is not None:
            images = images[in_classes(labels, classes)]
        images = common.resize_uint8(images, size)  # as the training images are
        return images[subset(len(images), n, seed)] if len(images) else None
    if not trained:
        return None
    if dataset in LABELLED:
        images, labels = common.load_tensor_dataset(dataset, root, size)
        left = torch.ones(len(images), dtype=torch.bool)
        left[common.train_subset(len(images), trained[0], trained[1], labels)] = False
        if classes is not None:
            left &= in_classes(labels, classes)
        images = images[left]
        return images[subset(len(images), n, seed)] if len(images) else None
    files = common.list_images(common._celeba_folder(root) if dataset == "celeba" else root)
    used = set(common.train_subset(len(files), *trained).tolist())
    files = [f for i, f in enumerate(files) if i not in used]
    return read_files(files, channels, n, seed, size) if files else None


def nearest_distances(images, train, chunk=500):
    """Each image's pixel (L2, in [0, 1] units) distance to its nearest image of `train` (uint8 sets)."""
    train = train.flatten(1).float().div_(255)
    return torch.cat(
        [torch.cdist(x.flatten(1).float().div_(255), train).amin(dim=1) for x in images.split(chunk)]
    )


def copy_share(fake, train, held_out):
    """The share of fake images closer (in pixels) to their nearest training image than the median
    held-out real image is to its own. Held-out real images score 0.5 (the reference); a model
    that returns its training images scores 1; below 0.5, its samples are farther from the
    training images than new real images are."""
    reference = nearest_distances(held_out, train).median()
    return (nearest_distances(fake, train) < reference).double().mean().item()


def in_classes(labels, classes):
    return torch.isin(labels, torch.as_tensor(list(classes)))


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        common.fail(f"{path}: neither a folder of images nor a readable checkpoint ({type(e).__name__}: {e})")


def generate(path, ckpt, n, device, folder):
    """Run the script that wrote the checkpoint with --generate; its PNGs land under folder."""
    script = ckpt.get("script")
    if not script or not (HERE / script).is_file():
        common.fail(f"{path} names no script beside evaluate.py ({script or 'none'}): it cannot make samples")
    if "image_size" not in ckpt.get("args", {}):
        common.fail(f"{path} was written by {script}, which makes no images")
    per_pair = ckpt["args"].get("classes")  # dcgan_classwise: --generate N writes N for each class
    count = math.ceil(n / len(per_pair)) if per_pair else n
    spec = importlib.util.spec_from_file_location(Path(script).stem, HERE / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--resume", str(path), "--generate", str(count), "--out", str(folder), "--device", device])


# -- Putting it together --------------------------------------------------------------------------------
def evaluate(
    fake,
    dataset,
    data_root,
    features="classifier",
    n=10_000,
    device="cpu",
    seed=0,
    classes=None,
    trained=None,
):
    """Every metric of uint8 fake images (N x C x S x S) against up to n real training images at S x S
    (of `classes` only, if given: a model trained on some classes is judged on those; trained:
    (N, seed) of a --train_images run, whose training images are those N), and, where there are
    real images no run trained on, fid_held_out and copy_share against those."""
    need_fidelity()
    device = torch.device(device)
    channels = 3 if features == "inception" or dataset not in LABELLED else fake.shape[1]
    size = fake.shape[-1]
    real, labels = real_images(dataset, data_root, size, channels, n, seed, classes, trained)
    held = held_out_images(dataset, data_root, size, channels, n, seed, classes, trained)
    if real.shape[1] != fake.shape[1] and features == "classifier":
        common.fail(f"the images have {fake.shape[1]} channel(s); {dataset} has {real.shape[1]}")
    if min(len(fake), len(real)) < 10:
        common.fail(f"too few images to compare: {len(fake)} generated, {len(real)} real (10 or more each)")
    if features == "classifier":
        net, info = load_classifier(dataset, data_root, device, labels)
        fake_feats, probs = classifier_outputs(net, fake)
        result = compare(fake_feats, classifier_outputs(net, real)[0], seed, net.feature_rms.item())
        result.update(
            class_scores(probs, labels if classes is None else labels[in_classes(labels, classes)], CLASSES)
        )
        held_feats = classifier_outputs(net, held)[0] if held is not None else None
    else:
        net = inception_network(device)
        fake_feats, logits = inception_outputs(net, fake, device)
        result = compare(fake_feats, inception_outputs(net, real, device)[0], seed)
        held_feats = inception_outputs(net, held, device)[0] if held is not None else None
        isc = need_fidelity()[3].isc_features_to_metric(logits, splits=10, rng_seed=seed)
        result.update(
            inception_score=isc["inception_score_mean"], inception_score_std=isc["inception_score_std"]
        )
    if held is not None and len(held) >= 10:
        result["fid_held_out"] = frechet_distance(gaussian(fake_feats), gaussian(held_feats))
        result["copy_share"] = copy_share(fake, real, held)
        result["n_held_out"] = len(held)
    else:
        print(
            "note: no real images held out from training (no test split on disk): no fid_held_out, copy_share"
        )
    result.update(n_fake=len(fake), n_real=len(real), features=features)
    if features == "classifier":
        result["classifier_accuracy"] = info["accuracy"]
    return result


class QualityMeter:
    """measure(images): the classifier FID of float images in [-1, 1] against the real statistics.

    The real statistics come from every training image, once, when the meter is built (about 7 s
    for MNIST's 60,000 on a shared 2-core CPU, 2 s for 4,000); each call then costs one forward
    pass of the small classifier, a mean and covariance of 128-d features and torch-fidelity's FID
    arithmetic (0.1-0.2 s for 1,000 images of 32 x 32 there). The FID of N images is biased upward
    by roughly const / N: pass the same number of images at every call."""

    def __init__(self, net, real_stats, n):
        self.net, self.real_stats, self.n = net, real_stats, n

    def __call__(self, images):
        if not 2 <= len(images) <= self.n:
            raise ValueError(f"measure() takes 2 to {self.n} images, not {len(images)}")
        feats, _ = classifier_outputs(self.net, images.detach())
        return float(frechet_distance(gaussian(feats), self.real_stats))


def quality_meter(dataset, data_root, image_size, channels, device, n=1000, classes=None):
    """The training scripts' quality figure: a callable measure(images) -> FID, or None.

    dataset, data_root, image_size, channels: the run's data (its real images, at the run's size);
    device: where the classifier runs (images may be on any device); n: the most images one call
    takes; classes: the classes the run trains on (--digit, --classes), so that a one-digit run is
    measured against that digit. The real statistics use every training image (of those classes).
    None, after a one-line note, for data without labels or without torch-fidelity."""
    if dataset not in LABELLED:
        print(f"note: quality figure skipped: {dataset} has no class labels for the evaluation classifier")
        return None
    if fidelity() is None:
        print(f"note: quality figure skipped: torch-fidelity is not installed ({INSTALL})")
        return None
    images, labels = common.load_tensor_dataset(dataset, data_root, image_size)
    if images.shape[1] != channels:
        raise ValueError(f"{dataset} has {images.shape[1]} channel(s), not {channels}")
    net, _ = load_classifier(dataset, data_root, torch.device(device), labels)
    if classes is not None:
        images = images[in_classes(labels, classes)]
    return QualityMeter(net, gaussian(classifier_outputs(net, images)[0]), n)


def class_list(text):
    if not all(c.strip().isdigit() and int(c) < CLASSES for c in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of classes 0 to 9, e.g. 0,3")
    return sorted({int(c) for c in text.split(",")})


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p = parser.add_argument
    p("path", help="a folder of images (PNG/JPEG, nested or flat) or a checkpoint.pt of one of the scripts")
    p(
        "--dataset",
        choices=common.IMAGE_DATASETS,
        default=None,
        help="the real data (default: the checkpoint's, else mnist)",
    )
    p("--data_root", default=None, help="where the real data lives (default: the checkpoint's, else ./data)")
    p(
        "--features",
        choices=("classifier", "inception"),
        default=None,
        help="feature space (default: classifier for mnist, fashion-mnist, cifar10; inception otherwise)",
    )
    p(
        "--n",
        type=common.positive_int,
        default=10_000,
        help="generated images (made or read) and the most real images (default 10000)",
    )
    p("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 (default auto)")
    p(
        "--classes",
        type=class_list,
        default=None,
        help="compare with these classes only, e.g. 0,3 (default: the checkpoint's --classes/--digit)",
    )
    p(
        "--seed",
        type=int,
        default=0,
        help="picks the real subset, a folder's subset and KID's subsets (default 0)",
    )
    p("--json", action="store_true", help="print one JSON line instead of a 'name value' line per metric")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    need_fidelity()
    path = Path(args.path)
    if not path.exists():
        common.fail(f"{path}: no such folder or checkpoint")
    ckpt = None if path.is_dir() else load_checkpoint(path)
    made = (ckpt or {}).get("args", {})
    dataset = args.dataset or made.get("dataset", "mnist")
    data_root = args.data_root or made.get("data_root", "./data")
    features = args.features or ("classifier" if dataset in LABELLED else "inception")
    if features == "classifier" and dataset not in LABELLED:
        common.fail(f"--features classifier needs labelled data ({', '.join(LABELLED)}), not {dataset}")
    classes = (
        args.classes or made.get("classes") or ([made["digit"]] if made.get("digit") is not None else None)
    )
    if classes is not None and dataset not in LABELLED:
        common.fail(f"--classes needs a labelled dataset ({', '.join(LABELLED)}), not {dataset}")
    device = common.pick_device(args.device)
    if features == "inception":
        inception_weights()  # before generating anything: stop at once if they cannot be had
    channels = 1 if dataset in ("mnist", "fashion-mnist") and features == "classifier" else 3
    # with --json, stdout carries only the JSON line: every note (and the script's console) goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        if ckpt is None:
            fake = read_images(path, channels, args.n, args.seed)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                generate(path, ckpt, args.n, args.device, tmp)
                fake = read_images(tmp, channels, math.inf)
        trained = (made["train_images"], made.get("seed", 0)) if made.get("train_images") else None
        result = evaluate(fake, dataset, data_root, features, args.n, device, args.seed, classes, trained)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name} {value:.6g}" if isinstance(value, float) else f"{name} {value}")
    return result


if __name__ == "__main__":
    main()
