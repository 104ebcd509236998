"""The front page and docs are rendered from results records: nothing there drifts from the records,
every link resolves, and the benchmarks write the records the pages are made from."""

import importlib.util
import json
import re
import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import records  # noqa: E402
import report  # noqa: E402

SEVEN = ["gan_gaussian", "gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_pages_are_what_the_records_render():
    stale = [base for base, text in report.pages(records.load()).items() if (ROOT / base).read_text() != text]
    assert not stale, f"run python benchmarks/report.py: {stale} differ from the records"


def test_every_link_and_image_of_the_pages_exists():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 15_000
    head = "\n".join(text.splitlines()[:25])
    assert "pip install" in head and "python gan_gaussian.py" in head and "python -m pytest" in head
    assert "<!-- report:models -->" in text and "docs/results.md" in text


def test_a_page_per_model_with_numbered_departures_and_a_picture():
    for script in SEVEN:
        text = (ROOT / "docs" / f"{script}.md").read_text()
        departures = text.split("## Departures", 1)[1].split("\n## ", 1)[0]
        assert re.search(r"^1\. ", departures, re.M), f"{script}: departures are not numbered"
        images = re.findall(r"!\[[^]]*\]\(([^)]+\.(?:png|gif))\)", text)
        assert any((ROOT / "docs" / i).is_file() for i in images), f"{script}: no picture"
        assert f"<!-- report:results {script} -->" in text


def record(kind, script, date, fid, cpu="AMD EPYC", **extra):
    machine = dict(cpu=cpu, cores=2, torch="2.14.1", device="cpu")
    return dict(kind=kind, script=script, flags="", date=date, machine=machine, budget_min=8,
                steps=100, metrics=dict(fid=fid), **extra)  # fmt: skip


def test_a_public_run_is_set_beside_ours_only_from_the_same_day_and_machine():
    rs = [
        record("quality", "wgan_gp", "2026-11-25", 29.7),
        record("public", "PyTorch-GAN wgan_gp.py", "2026-11-25", 104.0),
        record("public", "PyTorch-GAN wgan_gp.py", "2026-11-26", 99.0),  # another day: no pair
        record("public", "PyTorch-GAN wgan_gp.py", "2026-11-25", 98.0, cpu="Intel Xeon"),  # another machine
    ]
    text = report.block_results(rs, "wgan_gp", "docs/wgan_gp.md")
    pairs = text.split("Beside the public implementations", 1)[1]
    assert pairs.count("ours: `wgan_gp.py`") == 1
    assert pairs.count("no run of ours on the same day and machine") == 2
    assert "| ours: `wgan_gp.py` | 8 | 29.7 |" in pairs
    ours_row = pairs.index("ours: `wgan_gp.py` | 8 | 29.7")
    assert pairs.index("| PyTorch-GAN wgan_gp.py | 8 | 104.0 |") > ours_row


def test_the_front_page_shows_measured_runs_of_one_day_and_machine_only():
    """The models table, the summary and their public pairs: only records a benchmark made (with a
    commit), and all of the newest such day and machine; a transcribed figure or another day's
    run is never set beside them as current."""
    today, other = dict(commit="abc1234"), dict(commit="def5678", cpu="Intel Xeon")
    rs = [
        record("quality", "gan_mnist", "2026-12-06", 40.0, **other),  # the same day, another machine, earlier
        record("quality", "dcgan", "2026-12-06", 30.1, **today),
        record("quality", "wgan", "2026-12-06", 50.2, **today),
        record("quality", "wgan_gp", "2026-12-07", 11.1, commit="unknown", source="README.md at 66873d9"),
        record("quality", "sn_dcgan", "2026-12-05", 12.5, commit="0123abc"),  # an older day
        record("public", "PyTorch-GAN wgan.py", "2026-12-06", 90.9, **today),
        record("public", "PyTorch-GAN dcgan.py", "2026-12-06", 80.8, commit="unknown", source="README"),
    ]
    models, summary = report.block_models(rs, "README.md"), report.block_summary(rs, "README.md")
    for text in (models, summary):
        assert "30.1" in text and "50.2" in text
        for figure in ("11.1", "12.5", "40.0", "80.8"):
            assert figure not in text, figure
    assert "90.9" in summary and summary.index("ours: `wgan.py`") < summary.index("PyTorch-GAN wgan.py")
    # the day and machine said once, above the rows; each row names the commit that made it
    assert summary.startswith("Every row: 2026-12-06, AMD EPYC, 2 cores") and "2026-12-06 |" not in summary
    assert "| `dcgan.py` | 8 | 30.1 |" in summary and summary.count("| abc1234 |") == 4
    assert report.current_day(rs) == ("2026-12-06", "AMD EPYC, 2 cores")
    assert report.current_day(rs[3:5]) == ("2026-12-05", "AMD EPYC, 2 cores")  # transcribed: never current
    # a newer day that measured fewer scripts again does not take the front page
    later = [*rs, record("quality", "sn_dcgan", "2026-12-08", 21.0, **today)]
    assert report.current_day(later) == ("2026-12-06", "AMD EPYC, 2 cores")
    models = report.block_models(later, "README.md")
    assert "30.1" in models and "21.0" not in models
    later.append(record("quality", "dcgan", "2026-12-08", 31.0, **today))
    assert report.current_day(later) == ("2026-12-06", "AMD EPYC, 2 cores")  # 12-06 has a public pair too
    later.append(record("quality", "gan_mnist", "2026-12-08", 32.0, **today))
    assert report.current_day(later) == ("2026-12-08", "AMD EPYC, 2 cores")


def test_a_run_whose_defaults_changed_since_stays_on_the_front_page_with_the_flags_it_ran_with():
    """When a script's defaults change, its older records spell out what ran (flags "--augment none",
    defaults_then): the front page, its public pair and the strip keep that day's run and name the
    flags; a run given those flags by hand is not the defaults run."""
    today = dict(commit="abc1234")
    then = dict(record("quality", "dcgan", "2026-12-06", 30.1, **today), flags="--augment none")
    rs = [
        record("quality", "wgan", "2026-12-06", 50.2, **today),
        dict(then, defaults_then=True, grid="docs/images/runs/dcgan_8min_chain_2026-12-08.png"),
        record("public", "PyTorch-GAN dcgan.py", "2026-12-06", 80.8, **today),
    ]
    models, summary = report.block_models(rs, "README.md"), report.block_summary(rs, "README.md")
    assert "FID 30.1 (`--augment none`)" in models
    assert "| `dcgan.py` (`--augment none`) | 8 | 30.1 |" in summary and "changed since" in summary
    assert "| ours: `dcgan.py` (`--augment none`) | 8 | 30.1 |" in summary and "80.8" in summary
    assert "dcgan (`--augment none`) 8 min" in report.block_strip(rs, "README.md")
    page = report.block_results(rs, "dcgan", "docs/dcgan.md")
    assert "The newest run with default flags (its commit's: `--augment none`): 8 minutes" in page
    by_hand = [rs[0], then, rs[2]]
    models, summary = report.block_models(by_hand, "README.md"), report.block_summary(by_hand, "README.md")
    assert "30.1" not in models + summary and "changed since" not in summary


def test_a_lever_is_shown_beside_the_defaults_run_of_its_day():
    rs = [
        record("quality", "wgan", "2026-12-02", 108.5),
        record("quality", "wgan", "2026-11-25", 87.0),
        dict(record("quality", "wgan", "2026-12-02", 84.9), flags="--lr 5e-4", lever="lr 5e-4", kept=False),
    ]
    text = report.block_levers(rs, "wgan", "docs/levers.md")
    assert "| `wgan` | lr 5e-4 | `--lr 5e-4` | 8 | 108.5 | 84.9 | not kept |" in text


def test_quality_benchmark_appends_a_record(tmp_path, results_in_tmp):
    """gan_gaussian through benchmarks/quality.py: its record carries provenance, metrics and its plot."""
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    grids, ours = tmp_path / "grids", (ROOT / "results" / "gaussian.jsonl").read_text()
    flags = ["--flags=--steps 40", "--device", "cpu", "--out", str(tmp_path / "runs"), "--grids", str(grids)]
    quality.main(["gan_gaussian", *flags])
    lines = (results_in_tmp / "gaussian.jsonl").read_text().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["kind"] == "gaussian" and r["script"] == "gan_gaussian" and r["steps"] == 40
    assert r["flags"] == "--steps 40" and r["machine"]["device"] == "cpu"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", r["date"]) and r["commit"]
    assert {"cpu", "cores", "torch", "device"} <= set(r["machine"])
    assert isinstance(r["metrics"]["mean"], float) and r["metrics"]["std"] > 0
    kept = grids / r["grid"].split("/")[-1]
    assert kept.is_file()
    assert (ROOT / "results" / "gaussian.jsonl").read_text() == ours  # the repository's records untouched
    # another run of the same script, flags and day keeps its image beside the first's, not over it
    first, other = kept.read_bytes(), tmp_path / "other.png"
    other.write_bytes(b"another run's image")
    second = quality.keep_image(other, grids, kept.name)
    assert kept.read_bytes() == first and second.endswith(f"{kept.stem}_2.png")
    assert Path(second).read_bytes() == b"another run's image"


def test_a_model_page_shows_its_newest_runs_and_sends_the_reader_to_every_run():
    rs = [record("quality", "dcgan", f"2026-12-{d:02d}", 40.0 + d, commit="abc1234") for d in range(1, 10)]
    text = report.block_results(rs, "dcgan", "docs/dcgan.md")
    shown = [f"{40.0 + day:.1f}" for day in range(1, 10) if f"| {40.0 + day:.1f} |" in text]
    assert shown == [f"{40.0 + day:.1f}" for day in range(10 - report.PAGE_RUNS, 10)]  # the newest
    assert f"The newest {report.PAGE_RUNS} of its 9 runs" in text and "(results.md)" in text


def test_a_chained_run_is_one_row_with_its_figure_at_each_mark():
    rs = []
    for minutes, fid in ((8, 29.7), (15, 22.6), (30, 37.0)):
        rs.append(record("quality", "gan_mnist", "2026-12-07", fid, commit="abc1234", chain=[8, 15, 30]))
        rs[-1]["budget_min"] = minutes
    rs.append(record("quality", "gan_mnist", "2026-12-07", 50.0, commit="abc1234"))  # no chain: not here
    text = report.block_longer(rs, "docs/usage.md")
    assert text.count("`gan_mnist.py`") == 1 and "| 29.7 / 22.6 / 37.0 |" in text and "50.0" not in text


def test_a_model_page_shows_its_newest_lever_runs_and_levers_md_all_of_them():
    rs = []
    for d in range(1, 10):
        rs.append(record("quality", "dcgan", f"2026-12-{d:02d}", 60.0 + d, commit="abc1234"))
        rs[-1].update(lever=f"lever {d}", kept=False, flags="--x")
    page, every = (
        report.block_levers(rs, "dcgan", "docs/dcgan.md"),
        report.block_levers(rs, "all", "docs/levers.md"),
    )
    assert [d for d in range(1, 10) if f"lever {d} |" in page] == list(range(10 - report.PAGE_RUNS, 10))
    assert f"The newest {report.PAGE_RUNS} of its 9 lever runs" in page and "(levers.md)" in page
    assert all(f"lever {d} |" in every for d in range(1, 10)) and "The newest" not in every


def test_results_md_shows_each_data_file_by_the_first_digits_of_its_hash():
    digest = "0393ef47a54d9409156f803f9dadf5db43946dfc63ea96181bda88036556bfd8"
    rs = [record("quality", "dcgan", "2026-12-07", 30.0, data_sha256={"train-images-idx3-ubyte": digest})]
    text = report.block_kind(rs, "quality", "all", "docs/results.md")
    assert "train-images-idx3-ubyte 0393ef47 |" in text and digest not in text


def test_the_budgets_of_one_lever_run_share_a_row():
    """A chain of 8, 15 and 30 minutes is one run: one row, its figures in minutes order."""
    ada = dict(flags="--augment cutout", lever="cutout", kept=False, commit="abc1234")
    at = [(8, 58.4, {}), (30, 41.3, {}), (30, 52.0, ada), (8, 54.5, ada)]
    rs = [dict(record("quality", "dcgan", "2026-12-07", fid), budget_min=m, **more) for m, fid, more in at]
    rs.append(dict(record("quality", "dcgan", "2026-12-07", 60.0), **dict(ada, commit="def5678")))
    text = report.block_levers(rs, "dcgan", "docs/dcgan.md")
    assert "| `dcgan` | cutout | `--augment cutout` | 8 / 30 | 58.4 / 41.3 | 54.5 / 52.0 | not kept |" in text
    assert "| 8 | 58.4 | 60.0 |" in text and text.count("| `dcgan` |") == 2
