"""gan_gaussian.py: it learns N(3, 1), its networks are the specified ones, and the contract."""

import csv

import pytest
import torch
from helpers_cli import error_line

import common
import gan_gaussian


def test_default_run_reaches_the_target_mean_and_std(tmp_path):
    """Default flags and seed, 5,000 steps: mean within 0.1 of 3 and std within 0.1 of 1 on 10,000 samples."""
    G, D, mean, std = gan_gaussian.main(["--out", str(tmp_path / "r"), "--device", "cpu"])
    assert abs(mean.item() - 3.0) < 0.1
    assert abs(std.item() - 1.0) < 0.1
    for f in ("distribution.png", "losses.png", "mean_std.png", "log.csv", "checkpoint.pt"):
        assert (tmp_path / "r" / f).exists()
    with open(tmp_path / "r" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"step", "loss_d", "loss_g", "gen_mean", "gen_std"} <= set(rows[0])
    assert all(r["gen_mean"] and r["gen_std"] for r in rows)
    # a row every --log_every (50) steps, plus one at each epoch's end (156 steps), with its checkpoint
    assert [r["step"] for r in rows if int(r["step"]) % 50 == 0] == [str(s) for s in range(50, 5001, 50)]
    assert {str(e * 156) for e in range(1, 33)} <= {r["step"] for r in rows} and rows[-1]["step"] == "5000"


def test_networks_are_the_specified_ones():
    G, D = gan_gaussian.Generator(1, 1), gan_gaussian.Discriminator(1)
    linear = [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert linear == [16, 32, 16, 1]
    assert [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)] == [16, 16, 8, 1]
    assert [m.p for m in D.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5, 0.5]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in D.modules())  # logits: BCE with logits
    wide = gan_gaussian.Generator(1, 1, h=32)
    assert [m.out_features for m in wide.modules() if isinstance(m, torch.nn.Linear)] == [32, 64, 32, 1]


def test_uniform_noise_is_uniform_on_minus_one_one():
    z = gan_gaussian.noise(100_000, 3, "uniform", torch.device("cpu"))
    assert z.min() >= -1 and z.max() <= 1 and abs(z.mean()) < 0.01 and abs(z.var() - 1 / 3) < 0.01


def test_two_dimensions_end_to_end(tmp_path):
    out = tmp_path / "r"
    G, D, mean, std = gan_gaussian.main(
        ["--dims", "2", "--mean", "-1", "--out", str(out), "--max_steps", "300", "--device", "cpu"]
    )
    assert G(torch.rand(5, 2)).shape == (5, 2) and mean.shape == (2,) and std.shape == (2,)
    # 300 steps already move both marginals from G's start near 0 toward the target -1
    assert (mean < -0.5).all()
    gan_gaussian.main(["--resume", str(out / "checkpoint.pt"), "--generate", "7", "--device", "cpu"])
    rows = list(csv.reader(open(out / "generated.csv")))
    assert len(rows) == 7 and all(len(r) == 2 for r in rows)


def test_epochs_are_passes_over_the_training_set(tmp_path):
    gan_gaussian.main(
        ["--epochs", "2", "--train_size", "640", "--out", str(tmp_path / "r"), "--device", "cpu"]
    )
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 20  # 640 / 64 x 2


def test_smoke_through_the_entry_point(tmp_path):
    from conftest import run_script

    r = run_script("gan_gaussian.py", ["--max_steps", "1", "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert r.returncode == 0, r.stderr
    assert "done at step 1" in r.stdout and (tmp_path / "r" / "distribution.png").exists()


@pytest.mark.parametrize(
    "argv, flag",
    [(["--batch", "0"], "--batch"), (["--std", "-1"], "--std"), (["--dataset", "mnist"], "--dataset")],
)
def test_bad_flags_are_refused(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        gan_gaussian.main(argv)
    assert e.value.code == 2
    error_line(capsys.readouterr().err, flag)


def test_checkpoint_with_other_dims_is_refused(tmp_path):
    gan_gaussian.main(["--out", str(tmp_path / "r"), "--max_steps", "1", "--device", "cpu"])
    with pytest.raises(SystemExit, match="--dims 1.*--dims 3"):
        gan_gaussian.main(["--resume", str(tmp_path / "r" / "checkpoint.pt"), "--dims", "3"])


def test_checkpoints_each_epoch_so_a_killed_run_can_resume(tmp_path, monkeypatch):
    """An epoch is 10,000 / 64 = 156 steps: a run killed at step 200 has the checkpoint of step 156."""
    real_g_step = gan_gaussian.g_step
    calls = []

    def dies_at_step_200(*args):
        calls.append(1)
        if len(calls) == 200:
            raise KeyboardInterrupt  # killed: no Ctrl-C handler ran, nothing saved at this point
        return real_g_step(*args)

    monkeypatch.setattr(gan_gaussian, "g_step", dies_at_step_200)
    with pytest.raises(KeyboardInterrupt):
        gan_gaussian.main(["--out", str(tmp_path / "r"), "--device", "cpu"])
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 156 and ckpt["batches_done"] == 156


def test_auto_device_trains_on_the_cpu_even_where_a_gpu_is_visible(tmp_path, monkeypatch):
    """--device auto (the default, not given here) picks the CPU where any other script would pick the GPU."""
    picked, real_pick = [], common.pick_device

    def pick_where_a_gpu_is_visible(name):  # pick_device's own logic, on a machine that shows a GPU
        with monkeypatch.context() as m:  # (only here: torch itself would then try to start CUDA)
            m.setattr(torch.cuda, "is_available", lambda: True)
            picked.append((name, real_pick(name)))
        return picked[-1][1]

    assert pick_where_a_gpu_is_visible("auto") == torch.device("cuda")  # where an image script trains
    picked.clear()
    monkeypatch.setattr(common, "pick_device", pick_where_a_gpu_is_visible)
    try:
        G, D, *_ = gan_gaussian.main(["--out", str(tmp_path / "r"), "--steps", "3"])
    finally:  # checked even when main raised: without CUDA, a run that picked it fails on first use
        assert picked and {device for _, device in picked} == {torch.device("cpu")}, picked
    assert {p.device for p in (*G.parameters(), *D.parameters())} == {torch.device("cpu")}
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 3
    assert gan_gaussian.build_parser()._option_string_actions["--device"].help.startswith("auto (= cpu")
