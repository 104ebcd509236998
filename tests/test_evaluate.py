"""evaluate.py: the FID arithmetic against the closed form, scores that order clean, corrupted and
collapsed images as they should, the cached classifier, the meter the training scripts use, the CLI
on a folder and on a checkpoint, and the one-line stops (no Inception weights, no torch-fidelity)."""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import bar_images, make_mnist

import common
import evaluate
import wgan_gp


@pytest.fixture(scope="module")
def real(mnist_root):
    """The fixture's 120 training images (uint8, 28 x 28) and the classifier trained on them."""
    images, labels = common.load_tensor_dataset("mnist", mnist_root, 28)
    net, _ = evaluate.load_classifier("mnist", mnist_root)
    return images, labels, net


def noisy(images, level, seed=1):
    """uint8 images plus Gaussian noise of std `level` in the [-1, 1] scale, back to uint8."""
    x = images.float() / 127.5 - 1
    x = x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def frechet(features_1, features_2):
    return evaluate.frechet_distance(evaluate.gaussian(features_1), evaluate.gaussian(features_2))


@pytest.mark.parametrize("rotate", [False, True])
def test_frechet_distance_of_two_gaussians_is_the_closed_form(rotate):
    g = torch.Generator().manual_seed(0)
    mu_1, mu_2 = torch.randn(2, 6, generator=g, dtype=torch.float64)
    var_1, var_2 = torch.rand(2, 6, generator=g, dtype=torch.float64) * 3 + 0.1
    # ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); for diagonal S, sum of (s1 + s2 - 2 sqrt(s1 s2))
    expected = ((mu_1 - mu_2) ** 2).sum() + (var_1 + var_2 - 2 * (var_1 * var_2).sqrt()).sum()
    sigma_1, sigma_2 = torch.diag(var_1), torch.diag(var_2)
    if rotate:  # the same rotation of both: the distance does not change, but S1 S2 is no longer diagonal
        q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
        mu_1, mu_2, sigma_1, sigma_2 = q @ mu_1, q @ mu_2, q @ sigma_1 @ q.T, q @ sigma_2 @ q.T
    stats = [{"mu": m.numpy(), "sigma": s.numpy()} for m, s in ((mu_1, sigma_1), (mu_2, sigma_2))]
    assert evaluate.frechet_distance(*stats) == pytest.approx(expected.item(), rel=1e-9)


def test_real_against_real_scores_near_zero(real, mnist_root):
    images, _, net = real
    same = evaluate.evaluate(images, "mnist", mnist_root, n=1000, device="cpu")
    assert abs(same["fid"]) < 1e-4
    assert same["precision"] == 1 and same["recall"] == 1 and same["class_coverage"] == 1
    # two independent draws of 300 images each from the fixture's distribution (class from the bar)
    labels = torch.arange(10).repeat(30).numpy()
    draw_1, draw_2 = (torch.as_tensor(bar_images(labels, seed=s)).unsqueeze(1) for s in (10, 11))
    f_1, f_2, f_noisy = (evaluate.classifier_outputs(net, x)[0] for x in (draw_1, draw_2, noisy(draw_2, 0.3)))
    two_draws = evaluate.compare(f_1, f_2, kid_scale=net.feature_rms.item())
    assert two_draws["fid"] < 0.02 * frechet(f_1, f_noisy)
    assert abs(two_draws["kid"]) < 3 * two_draws["kid_std"] + 1e-3


def test_more_noise_scores_worse_and_a_collapsed_set_has_low_recall(real, mnist_root):
    images = real[0]
    scores = [
        evaluate.evaluate(noisy(images, level), "mnist", mnist_root, device="cpu")
        for level in (0, 0.1, 0.3, 0.6)
    ]
    fids = [s["fid"] for s in scores]
    assert fids == sorted(fids) and len(set(fids)) == 4, fids
    assert scores[0]["kid"] < scores[2]["kid"] < scores[3]["kid"]
    assert scores[3]["precision"] < scores[0]["precision"]
    collapsed = evaluate.evaluate(images[:1].repeat(120, 1, 1, 1), "mnist", mnist_root, device="cpu")
    assert collapsed["fid"] > scores[1]["fid"] and collapsed["kid"] > scores[0]["kid"]
    assert collapsed["recall"] < 0.05 and collapsed["class_coverage"] == 0.1


def test_a_model_of_some_classes_is_compared_with_those_classes(real, mnist_root):
    images, labels, _ = real
    threes = images[labels == 3]
    alone = evaluate.evaluate(threes, "mnist", mnist_root, device="cpu", classes=[3])
    assert alone["n_real"] == len(threes) and abs(alone["fid"]) < 1e-4 and alone["class_coverage"] == 1
    among_all = evaluate.evaluate(threes, "mnist", mnist_root, device="cpu")
    assert among_all["fid"] > 100 and among_all["class_coverage"] == 0.1


def test_classifier_is_trained_once_then_loaded_and_retrained_for_other_data(tmp_path, monkeypatch, capsys):
    make_mnist(tmp_path)
    rng = torch.get_rng_state()
    net, info = evaluate.load_classifier("mnist", str(tmp_path))
    assert torch.equal(torch.get_rng_state(), rng)  # a training script's random numbers are not touched
    assert "trained on 120 mnist images" in capsys.readouterr().out
    assert info["accuracy"] >= 0.95  # the fixture's classes are bars on different rows
    assert (tmp_path / "evaluate_classifier_mnist.pt").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    with monkeypatch.context() as m:
        m.setattr(evaluate, "train_classifier", no_training)
        rng = torch.get_rng_state()
        again, _ = evaluate.load_classifier("mnist", str(tmp_path))
        assert torch.equal(torch.get_rng_state(), rng)  # loading leaves the caller's RNG alone too
    out = capsys.readouterr().out
    assert "loaded" in out and f"held-out accuracy {info['accuracy']:.4f}" in out
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    _, labels = common.load_tensor_dataset("mnist", str(tmp_path), 28)
    evaluate.load_classifier("mnist", str(tmp_path), train_labels=labels[:100])  # other data: retrained
    assert "from other data or code; training a new one" in capsys.readouterr().out


def test_classifier_of_a_read_only_data_folder_is_cached_in_home(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_mnist(data)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    before = sorted(data.rglob("*"))
    data.chmod(0o555)  # read-only by its permission bits (which root could otherwise ignore)
    try:
        evaluate.load_classifier("mnist", str(data))
    finally:
        data.chmod(0o755)
    assert sorted(data.rglob("*")) == before
    key = hashlib.sha1(str(data.resolve()).encode()).hexdigest()[:12]
    cached = tmp_path / "home" / ".cache" / "gan-collection" / f"evaluate_classifier_mnist_{key}.pt"
    assert cached.is_file()


def test_quality_meter_gives_the_training_images_fid_zero_and_noise_more(real, mnist_root):
    images = real[0]
    meter = evaluate.quality_meter("mnist", mnist_root, 32, 1, "cpu", n=200)
    at_32 = common.load_tensor_dataset("mnist", mnist_root, 32)[0].float() / 127.5 - 1
    assert abs(meter(at_32)) < 1e-4  # the same 120 images as the real statistics, through the same path
    fids = [meter(noisy(images, level).float() / 127.5 - 1) for level in (0.1, 0.6)]
    assert 0 < fids[0] < fids[1]
    assert isinstance(fids[0], float)
    with pytest.raises(ValueError, match="takes 2 to 200 images"):
        meter(torch.zeros(201, 1, 32, 32))


def test_quality_meter_is_none_for_unlabelled_data_or_without_torch_fidelity(mnist_root, monkeypatch, capsys):
    assert evaluate.quality_meter("celeba", mnist_root, 32, 3, "cpu") is None
    assert capsys.readouterr().out.count("\n") == 1
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if it were not installed
    assert evaluate.quality_meter("mnist", mnist_root, 32, 1, "cpu") is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "pip install -r requirements-eval.txt" in out
    with pytest.raises(SystemExit, match="pip install -r requirements-eval.txt"):
        evaluate.main([str(mnist_root)])


def test_cli_on_a_folder_prints_each_metric(real, mnist_root, tmp_path, capsys):
    at_16 = common.load_tensor_dataset("mnist", mnist_root, 16)[0]
    common.save_pngs(noisy(at_16, 0.1).float() / 127.5 - 1, tmp_path / "pngs" / "nested")
    evaluate.main(
        [str(tmp_path / "pngs"), "--dataset", "mnist", "--data_root", mnist_root, "--device", "cpu"]
    )
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines() if " " in line)
    assert float(lines["fid"]) > 0 and lines["n_fake"] == "120" and lines["features"] == "classifier"
    for name in ("kid", "kid_std", "precision", "recall", "class_confidence", "class_coverage"):
        float(lines[name])


def test_cli_on_a_checkpoint_generates_its_samples(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--max_steps", "1", "--hidden_dim", "4", "--batch", "8", "--zdim", "8", "--image_size", "16"]
    wgan_gp.main([*flags, "--device", "cpu", "--data_root", mnist_root, "--out", str(out)])
    capsys.readouterr()
    result = evaluate.main([str(out / "checkpoint.pt"), "--n", "24", "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out) == result  # notes went to stderr: stdout is the JSON line
    assert result["n_fake"] == 24 and result["n_real"] == 24 and result["fid"] > 0


def test_inception_without_network_or_weights_says_what_to_fetch_and_where(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "pngs"
    common.save_pngs(torch.zeros(12, 1, 16, 16), folder)
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(folder), "--features", "inception", "--data_root", mnist_root, "--device", "cpu"])
    message = str(stop.value)
    where = tmp_path / "torch" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert "\n" not in message and evaluate.INCEPTION_URL in message and str(where) in message


def test_cli_refuses_what_it_cannot_evaluate(mnist_root, tmp_path):
    with pytest.raises(SystemExit, match="no such folder or checkpoint"):
        evaluate.main([str(tmp_path / "missing")])
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match="neither a folder of images nor a readable checkpoint"):
        evaluate.main([str(tmp_path / "notes.txt")])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SystemExit, match="no images"):
        evaluate.main([str(tmp_path / "empty"), "--data_root", mnist_root])
    with pytest.raises(SystemExit, match="needs labelled data"):
        evaluate.main([str(Path(mnist_root)), "--dataset", "celeba", "--features", "classifier"])
