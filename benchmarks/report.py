"""Render every results table and figure of README.md and docs/ from the records in results/*.jsonl.

    python benchmarks/report.py            # rewrite the generated parts, docs/results.md and the figures
    python benchmarks/report.py --check    # exit 1 if any page differs from what the records render

A page asks for a table with a pair of markers; everything between them is replaced:

    <!-- report:models -->              README's models table, with each model's newest 8-minute figure
    <!-- report:summary -->             README's results: 8 and 30 minutes per model, public pairs
    <!-- report:strip -->               a strip of samples, one row per model, and where each row is from
    <!-- report:results SCRIPT -->      SCRIPT's runs, the public implementations' runs of the same day and
                                        machine beside ours, and its quality-over-training curve
    <!-- report:levers SCRIPT|all -->   changes tried against the defaults, beside their baseline run
    <!-- report:throughput -->          images/s: each machine's newest row of each configuration
    <!-- report:layout -->              channels_last against contiguous, newest run per machine
    <!-- report:save_cost -->           seconds of one checkpoint save per script, newest run per machine
    <!-- report:kind KIND SCRIPT|all --> any other kind of record, as one table
    <!-- /report -->

A comparison is only set side by side when both records come from the same date and machine: this
machine's speed varies about 2x from day to day, and quality at a wall-clock budget follows speed.
"""

import argparse
import re
import sys
from pathlib import Path

import records

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["gan_gaussian", "gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
MODELS = {  # script: (paper, what it shows)
    "gan_gaussian": ("Goodfellow et al. 2014", "the smallest complete GAN: noise to N(3, 1) in 1-D"),
    "gan_mnist": ("Goodfellow et al. 2014", "the original MLP GAN on digits"),
    "dcgan": ("Radford, Metz, Chintala 2015", "the convolutional GAN everything since builds on"),
    "dcgan_classwise": ("built on DCGAN", "one DCGAN pair per class: labels without a conditional model"),
    "wgan": ("Arjovsky, Chintala, Bottou 2017", "Wasserstein loss, critic kept Lipschitz by clipping"),
    "wgan_gp": ("Gulrajani et al. 2017", "Wasserstein loss with a gradient penalty"),
    "sn_dcgan": ("Miyato et al. 2018", "DCGAN with a spectrally normalized discriminator"),
}
PUBLIC_OF = {"gan": "gan_mnist", "dcgan": "dcgan", "wgan": "wgan", "wgan_gp": "wgan_gp"}
MARKER = re.compile(r"(<!-- report:([^>]*?) -->\n)(.*?)(<!-- /report -->)", re.DOTALL)
IMAGES = "docs/images/report"


# -- Formatting ---------------------------------------------------------------------------------------
def num(value, digits=None):
    """A figure as a table shows it: `digits` decimals, or an integer with thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(num(v, digits) for v in value)
    if digits is None:  # whole numbers as they are, fractions to about three significant digits
        if isinstance(value, int) or value.is_integer():
            return f"{value:,.0f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:,.1f}"
    return f"{value:,.{digits}f}"


METRICS = {
    "fid": ("FID", 1),
    "kid": ("KID", 3),
    "precision": ("precision", 2),
    "recall": ("recall", 2),
    "fid_held_out": ("held-out FID", 1),
    "copy_share": ("copy share", 2),
}


def machine(r):
    return records.machine_label(r.get("machine", {}))


def day(r):
    return (r.get("date"), machine(r))


def link(path, base):
    """A path from the repository root, written relative to the page at `base` (README.md or docs/...)."""
    if not path:
        return "-"
    rel = Path(path).relative_to("docs") if base.startswith("docs/") and path.startswith("docs/") else None
    return f"[grid]({rel if rel is not None else ('../' + path if base.startswith('docs/') else path)})"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def newest_first(rs):
    indexed = list(enumerate(rs))
    return [r for _, r in sorted(indexed, key=lambda ir: (ir[1].get("date", ""), ir[0]), reverse=True)]


def flags(r):
    return f"`{r['flags']}`" if r.get("flags") else "defaults"


def ran_defaults(r):
    """A run with its commit's default flags: none given, or flags written out later (defaults_then) when
    the script's defaults changed, so that `flags` says what ran in terms of today's defaults."""
    return not r.get("flags") or bool(r.get("defaults_then"))


def then(r):
    """' (`FLAGS`)' after a script's name where its defaults changed since the run, else ''."""
    return f" (`{r['flags']}`)" if r.get("flags") else ""


def metric_table(head, rows):
    """table(), less the metric columns that no row has (older records carry no held-out FID)."""
    names = {h for h, _ in METRICS.values()}
    keep = [i for i, h in enumerate(head) if h not in names or any(row[i] != "-" for row in rows)]
    return table([head[i] for i in keep], [[row[i] for i in keep] for row in rows])


def metric_cells(r, keys=METRICS):
    m = r.get("metrics", {})
    return [num(m.get(k), METRICS[k][1]) for k in keys]


FRONT = [k for k in METRICS if k != "kid"]  # README's results leave KID to the pages and results.md


# -- Selecting ----------------------------------------------------------------------------------------
def of(rs, kind, script=None):
    return [r for r in rs if r["kind"] == kind and (script in (None, "all") or r.get("script") == script)]


def measured(r):
    """Made by a benchmark run of a known commit (not transcribed from an older page: those carry a
    `source` and no commit); only these are shown as current."""
    return r.get("commit", "unknown") not in ("", "unknown") and "source" not in r


def provenance(r):
    """'commit abc1234', or where a transcribed record's figure was read."""
    return f"commit {r['commit']}" if measured(r) else f"transcribed from {r.get('source', 'an older page')}"


def current_day(rs):
    """(date, machine) of the README's models table, its summary and its strip: of the days and
    machines with measured 8-minute defaults runs, the one that measured the most of what the front
    page shows (image scripts, gan_gaussian, the real held-out digits, public implementations), the
    newest of those. They show runs of that one day and machine only, never figures of other days
    side by side (machines differ 3-4x in speed from one day to the next); a day that measured some
    scripts again (longer runs, say) does not leave the others, or the public pairs, without a figure."""
    runs = [r for r in of(rs, "quality") if measured(r) and ran_defaults(r) and r.get("budget_min") == 8]
    shown = {}
    for r in runs:
        shown.setdefault(day(r), set()).add(r["script"])
    for r in rs:  # the front page's other rows: gan_gaussian, the real digits, the public pairs
        other = r.get("kind") in ("gaussian", "public") or r.get("script") == "real"
        if other and measured(r) and not r.get("flags") and day(r) in shown:
            shown[day(r)].add(r["script"])
    return max(shown, key=lambda d: (len(shown[d]), d[0])) if shown else None


def current_run(rs, script, budget):
    """The newest measured defaults run of `script` at `budget` minutes on the current day and machine."""
    on = current_day(rs)
    return defaults_run([r for r in rs if measured(r)], script, budget, on_day=on) if on else None


def defaults_run(rs, script, budget, on_day=None, flags_=""):
    """The newest run of `script` with `flags_` (the defaults: ran_defaults) at `budget` minutes, on
    `on_day` if given."""
    for r in newest_first(of(rs, "quality", script)):
        if (
            (r.get("flags", "") == flags_ or not flags_ and ran_defaults(r))
            and r.get("budget_min") == budget
            and on_day in (None, day(r))
        ):
            if r.get("lever") is None or flags_:
                return r
    return None


def ours_for(public):
    name = public["script"].split()[-1].removesuffix(".py")
    return PUBLIC_OF.get(name)


# -- Blocks -------------------------------------------------------------------------------------------
def block_models(rs, base):
    rows = []
    for script in SCRIPTS:
        paper, shows = MODELS[script]
        if script == "gan_gaussian":
            runs = [
                r for r in of(rs, "gaussian", script)
                if measured(r) and not r.get("flags") and day(r) == current_day(rs)
            ]  # fmt: skip
            r = next(iter(newest_first(runs)), None)
            m = r["metrics"] if r else {}
            figure = f"mean {num(m.get('mean'), 3)}, std {num(m.get('std'), 3)}" if r else "-"
        else:
            r = current_run(rs, script, 8)
            figure = f"FID {num(r['metrics'].get('fid'))}{then(r)}" if r else "not measured"
        when = f"{r['date']}, {machine(r)}" if r else "-"
        doc = f"docs/{script}.md" if base == "README.md" else f"{script}.md"
        rows.append([f"[`{script}.py`]({doc})", paper, shows, figure, when])
    floor = [r for r in of(rs, "quality", "real") if measured(r) and day(r) == current_day(rs)]
    if floor:  # the best a model's 1,000 samples can score: 1,000 real digits it never trained on
        r = newest_first(floor)[0]
        shows = "the floor: real digits no model trained on, measured as samples are"
        figure, when = f"FID {num(r['metrics'].get('fid'))}", f"{r['date']}, {machine(r)}"
        rows.append(["real held-out digits", "-", shows, figure, when])
    return table(
        ["script", "paper", "what it shows", "8 minutes, CPU (gan_gaussian: whole run)", "measured"], rows
    )


def block_summary(rs, base):
    """README's results: each image model's newest defaults run at 8 and 30 minutes, and the newest
    public run of each public implementation that has a run of ours from the same day and machine."""
    head = ["script", "minutes", *[METRICS[k][0] for k in FRONT], "G steps", "images/s", "commit"]
    rows, changed = [], False  # changed: a row ran before its script's defaults changed
    for script in SCRIPTS[1:]:
        for budget in (8, 30):
            r = current_run(rs, script, budget)
            if r:
                changed |= bool(r.get("flags"))
                cells = [*metric_cells(r, FRONT), num(r.get("steps")), num(r.get("images_per_s"))]
                rows.append([f"`{script}.py`{then(r)}", num(budget), *cells, r.get("commit", "-")[:7]])
    pairs, seen = [], set()
    for p in newest_first([r for r in of(rs, "public") if measured(r) and day(r) == current_day(rs)]):
        ours = current_run(rs, ours_for(p), p.get("budget_min")) if ours_for(p) else None
        if ours is None or p["script"] in seen:
            continue
        seen.add(p["script"])
        for r, who in ((ours, f"ours: `{ours['script']}.py`{then(ours)}"), (p, p["script"])):
            pairs.append([who, num(r.get("budget_min")), *metric_cells(r, FRONT), num(r.get("steps")),
                          num(r.get("images_per_s")), r.get("commit", "-")[:7]])  # fmt: skip
    on = current_day(rs)
    parts = [
        f"Every row: {on[0]}, {on[1]} (the commit is this collection's at the run)."
        + (" Flags after a name: that script's defaults at the run, changed since." if changed else ""),
        metric_table(head, rows),
    ]
    if pairs:
        parts += ["Beside the public implementations, each pair from one day and machine:",
                  metric_table(["implementation", *head[1:]], pairs)]  # fmt: skip
    return "\n\n".join(parts)


PAGE_RUNS = 5  # a model page's newest runs (pages stay under 12,000 characters); results.md has all


def block_results(rs, script, base):
    if script == "gan_gaussian":
        parts = [block_kind(rs, "gaussian", script, base)]
        shown = next(
            (r for r in newest_first(of(rs, "gaussian", script)) if r.get("grid") and not r.get("flags")),
            None,
        )
        if shown:  # the newest default run's distribution plot: what the code of that commit makes
            path = shown["grid"].removeprefix("docs/") if base.startswith("docs/") else shown["grid"]
            parts.append(
                f"![gan_gaussian, real against generated, newest run with default flags]({path})\n\n"
                f"The real training samples and 10,000 generated ones after the newest default run: "
                f"{num(shown.get('steps'))} steps, {shown['date']}, {machine(shown)}, {provenance(shown)}."
            )
        return "\n\n".join(parts)
    # a lever's runs are in the page's levers table (and every run in docs/results.md)
    runs = newest_first([r for r in of(rs, "quality", script) if not r.get("lever")])
    head = [
        "minutes",
        "flags",
        *[h for h, _ in METRICS.values()],
        "G steps",
        "images/s",
        "date",
        "machine",
        "",
    ]
    rows = [
        [num(r.get("budget_min")), flags(r), *metric_cells(r), num(r.get("steps")),
         num(r.get("images_per_s")), r.get("date"), machine(r), link(r.get("grid"), base)]
        for r in runs[:PAGE_RUNS]
    ]  # fmt: skip
    parts = [metric_table(head, rows) if rows else "No runs recorded yet."]
    if len(runs) > PAGE_RUNS:
        every = "results.md" if base.startswith("docs/") else "docs/results.md"
        parts.append(f"The newest {PAGE_RUNS} of its {len(runs)} runs; all are in [results.md]({every}).")
    pairs = []
    for p in newest_first([p for p in of(rs, "public") if ours_for(p) == script]):
        ours = defaults_run(rs, script, p.get("budget_min"), on_day=day(p))
        if ours is None:
            pairs.append([p["script"], num(p.get("budget_min")), *metric_cells(p), num(p.get("steps")),
                          p["date"], machine(p), "no run of ours on the same day and machine"])  # fmt: skip
            continue
        for r, who in ((ours, f"ours: `{script}.py`"), (p, p["script"])):
            pairs.append([who, num(r.get("budget_min")), *metric_cells(r), num(r.get("steps")), r["date"],
                          machine(r), ""])  # fmt: skip
    if pairs:
        head = [
            "implementation",
            "minutes",
            *[h for h, _ in METRICS.values()],
            "G steps",
            "date",
            "machine",
            "",
        ]
        parts += [
            "Beside the public implementations (same protocol, same day and machine):",
            metric_table(head, pairs),
        ]
    with_grid = [r for r in runs if r.get("grid") and ran_defaults(r)]
    shown = next(iter([r for r in with_grid if measured(r)] + with_grid), None)
    if shown:  # the newest defaults run's samples (a measured one first): what the code of that commit makes
        path = shown["grid"].removeprefix("docs/") if base.startswith("docs/") else shown["grid"]
        parts.append(
            f"![{script}, newest run with default flags]({path})\n\nThe newest run with default flags"
            + (f" (its commit's: `{shown['flags']}`)" if shown.get("flags") else "")
            + ": "
            f"{num(shown.get('budget_min'))} minutes, {shown['date']}, {machine(shown)}, "
            f"{provenance(shown)}, {shown.get('data', 'MNIST')}."
        )
    if any(r.get("trajectory") for r in runs):
        rel = (
            f"images/report/{script}_quality.png"
            if base.startswith("docs/")
            else f"{IMAGES}/{script}_quality.png"
        )
        parts.append(f"![{script}: in-training FID over wall-clock minutes]({rel})")
    return "\n\n".join(parts)


def block_longer(rs, base):
    """Runs measured at several marks (`quality.py --chain`): does a longer run get worse? One row per
    run, FID and held-out FID at each mark, the copy share at the last."""
    runs = {}
    for r in of(rs, "quality"):
        if r.get("chain") and measured(r):
            key = (r["script"], r.get("flags", ""), day(r), tuple(r["chain"]))
            runs.setdefault(key, {})[r["budget_min"]] = r
    rows = []
    for (script, _, (date, where), marks), at in sorted(runs.items(), key=lambda kv: kv[0][2], reverse=True):
        last = at.get(marks[-1])
        cells = [num(at[m]["metrics"].get("fid"), 1) if m in at else "-" for m in marks]
        held = [num(at[m]["metrics"].get("fid_held_out"), 1) if m in at else "-" for m in marks]
        rows.append([
            f"`{script}.py`", flags(next(iter(at.values()))), ", ".join(num(m) for m in marks),
            " / ".join(cells), " / ".join(held), num(last["metrics"].get("copy_share"), 2) if last else "-",
            num(last.get("steps")) if last else "-", date, where,
        ])  # fmt: skip
    if not rows:
        return "No run measured at several marks yet."
    head = ["script", "flags", "minutes", "FID at each", "held-out FID at each", "copy share (last)",
            "G steps (last)", "date", "machine"]  # fmt: skip
    return table(head, rows)


def block_levers(rs, script, base):
    runs = {}  # one row per lever run: the budgets of one chain (same lever, commit, day) side by side
    for r in newest_first([r for r in of(rs, "quality", script) if r.get("lever")]):
        key = (r["script"], r["lever"], r.get("flags"), r.get("commit"), day(r))
        runs.setdefault(key, []).append(r)
    rows = []
    for run in runs.values():
        run.sort(key=lambda r: r.get("budget_min") or 0)
        r, before, after = run[0], [], []
        for each in run:
            base_run = defaults_run(
                rs, r["script"], each.get("budget_min"), day(r), r.get("baseline_flags", "")
            )
            before.append(num(base_run["metrics"].get("fid"), 1) if base_run else "no baseline that day")
            after.append(num(each.get("metrics", {}).get("fid"), 1))
        rows.append([
            f"`{r['script']}`", r["lever"], f"`{r['flags']}`",
            " / ".join(num(e.get("budget_min")) for e in run), " / ".join(before), " / ".join(after),
            "kept" if r.get("kept") else "not kept", r.get("why", ""), r["date"], machine(r),
        ])  # fmt: skip
    head = [
        "script",
        "change",
        "flags",
        "minutes",
        "FID baseline",
        "FID with it",
        "",
        "why",
        "date",
        "machine",
    ]
    if not rows:
        return "No levers recorded yet."
    if script == "all" or len(rows) <= PAGE_RUNS:
        return table(head, rows)
    more = f"The newest {PAGE_RUNS} of its {len(rows)} lever runs; all are in [levers.md](levers.md)."
    return table(head, rows[:PAGE_RUNS]) + "\n\n" + more


def cell(r, k):
    value = r.get(k)
    if k == "flags":
        return flags(r)
    if isinstance(value, bool):
        return {"kept": "kept" if value else "not kept"}.get(k, "yes" if value else "no")
    if isinstance(value, (int, float)):
        return num(value, 2 if k == "ratio" else None)
    if isinstance(value, dict):  # data_sha256: each file's hash, its first 8 digits (the record has all)
        return " ".join(f"{name} {str(v)[:8]}" for name, v in value.items())
    return "-" if value is None else value


def block_kind(rs, kind, script, base):
    runs = newest_first(of(rs, kind, script))
    if not runs:
        return f"No {kind} records yet."
    metric_keys = list(dict.fromkeys(k for r in runs for k in r.get("metrics", {})))
    skip = {
        "kind",
        "metrics",
        "machine",
        "date",
        "commit",
        "command",
        "source",
        "grid",
        "note",
        "data",
        "rows",
        "defaults_then",  # the flags say what ran; this only lets the front page keep such a run
    }
    skip |= {"trajectory", "script"} if script not in (None, "all") else {"trajectory"}
    fields = [k for k in dict.fromkeys(k for r in runs for k in r) if k not in skip]
    head = [*fields, *metric_keys, "date", "machine", "grid", "note"]
    rows = []
    for r in runs:
        cells = [cell(r, k) for k in fields]
        cells += [
            num(r.get("metrics", {}).get(k), 3 if kind.startswith("gaussian") else None) for k in metric_keys
        ]
        cells += [r.get("date"), machine(r), link(r.get("grid"), base), r.get("note", "")]
        rows.append(cells)
    out = [table(head, rows)]
    for r in runs:  # gpu_check and other records that carry a table of their own
        if r.get("rows"):
            keys = list(dict.fromkeys(k for row in r["rows"] for k in row))
            out.append(f"{r['date']}, {machine(r)}:\n\n" + table(keys, [[row.get(k, "") for k in keys]
                                                                        for row in r["rows"]]))  # fmt: skip
    return "\n\n".join(out)


def block_layout(rs, base):
    """docs/speed.md: the newest benchmarks/layout.py run per machine, a row per script and precision."""
    newest = {}
    for r in newest_first([r for r in of(rs, "layout") if measured(r)]):
        newest.setdefault(machine(r), r)
    head = ["script", "precision", "contiguous, s/step", "channels_last, s/step", "ratio", "pairs"]
    parts = []
    for label, r in sorted(newest.items()):
        rows = [[f"`{x['script']}.py`", x["precision"], num(x["contiguous_s_per_step"], 3),
                 num(x["channels_last_s_per_step"], 3), num(x["ratio"], 3),
                 ", ".join(num(p, 2) for p in x["pair_ratios"])] for x in r["rows"]]  # fmt: skip
        parts.append(f"{label}, {r['date']}, commit {r['commit']}: `python benchmarks/{r['command']}`\n\n"
                     + table(head, rows))  # fmt: skip
    return "\n\n".join(parts) or "no layout record yet: run `python benchmarks/layout.py`"


def block_save_cost(rs, base):
    """docs/distributed.md: the newest benchmarks/save_cost.py run per machine, a row per script."""
    newest = {}
    for r in newest_first([r for r in of(rs, "save_cost") if measured(r)]):
        newest.setdefault(machine(r), r)
    head = ["script", "flags", "checkpoint", "one save", "share of the time at the default --save_minutes"]
    parts = []
    for label, r in sorted(newest.items()):
        rows = [[f"`{x['script']}.py`", x["flags"] or "defaults", f"{x['bytes'] / 1e6:.1f} MB",
                 f"{x['seconds']:.3f} s", f"{100 * x['share_at_default']:.3f}%"]
                for x in r["rows"]]  # fmt: skip
        note = f" ({r['note']})" if r.get("note") else ""
        parts.append(f"{label}, {r['date']}, commit {r['commit']}, --save_minutes {r['save_minutes']:g}: "
                     f"`python benchmarks/{r['command']}`{note}\n\n" + table(head, rows))  # fmt: skip
    return "\n\n".join(parts) or "no record yet: run `python benchmarks/save_cost.py`"


def render_block(rs, spec, base):
    words = spec.split()
    if words == ["models"]:
        return block_models(rs, base)
    if words == ["summary"]:
        return block_summary(rs, base)
    if words == ["strip"]:
        return block_strip(rs, base)
    if words[0] == "results" and len(words) == 2:
        return block_results(rs, words[1], base)
    if words[0] == "levers" and len(words) == 2:
        return block_levers(rs, words[1], base)
    if words == ["throughput"]:  # per machine, the newest row of each configuration; all in results.md
        newest = {}
        for r in newest_first(of(rs, "throughput")):
            key = (machine(r), r.get("script"), r.get("variant"), r.get("flags"), r.get("processes"))
            newest.setdefault(key, r)
        return block_kind(list(newest.values()), "throughput", "all", base)
    if words == ["layout"]:
        return block_layout(rs, base)
    if words == ["longer"]:
        return block_longer(rs, base)
    if words == ["save_cost"]:
        return block_save_cost(rs, base)
    if words[0] == "kind" and len(words) == 3:
        return block_kind(rs, words[1], words[2], base)
    raise SystemExit(f"{base}: unknown report marker <!-- report:{spec} -->")


def render_page(rs, text, base):
    return MARKER.sub(lambda m: m[1] + render_block(rs, m[2].strip(), base) + "\n" + m[4], text)


def results_page(rs):
    """docs/results.md: every record, grouped by kind and script, newest first."""
    parts = [
        "# Every recorded run\n",
        "Rendered by `python benchmarks/report.py` from `results/*.jsonl`; do not edit by hand. Each row "
        "says the date and machine it was measured on: this machine's speed varies about 2x between days, so "
        "compare rows of one date. The commands, commits and notes are in the records themselves.\n",
    ]
    for kind in dict.fromkeys(r["kind"] for r in rs):
        parts.append(f"## {kind}\n")
        scripts = list(dict.fromkeys(r.get("script", "-") for r in of(rs, kind)))
        for script in sorted(scripts, key=lambda s: (SCRIPTS + [s]).index(s)):
            parts.append(f"### {script}\n\n{block_kind(rs, kind, script, 'docs/results.md')}\n")
    return "\n".join(parts)


def pages(rs):
    """{path: text} for every page with markers, and docs/results.md."""
    out = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        base = str(path.relative_to(ROOT))
        if base == "docs/results.md":
            continue
        text = path.read_text()
        if MARKER.search(text):
            out[base] = render_page(rs, text, base)
    out["docs/results.md"] = results_page(rs)
    return out


# -- Figures ------------------------------------------------------------------------------------------
def figures(rs):
    """Quality-over-training curves per script and the README's strip of samples, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = ROOT / IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    for script in SCRIPTS:
        runs = [r for r in newest_first(of(rs, "quality", script)) if r.get("trajectory")]
        if not runs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for r in runs:  # by minutes where a point has them, by generator steps where it has those
            label = f"{r['date']}, {flags(r).strip('`')}, {r['budget_min']:g} min"
            for ax, x in zip(axes, (0, 1)):
                points = [(t[x], t[2]) for t in r["trajectory"] if t[x] is not None and t[2] is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", label=label)
        axes[0].set(xlabel="wall-clock minutes (CPU)", ylabel="in-training FID (log)", yscale="log")
        axes[1].set(xlabel="generator steps", ylabel="in-training FID (log)")
        fig.suptitle(script)
        for ax in axes:
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.set_visible(False)  # no trajectory of this script has points on this axis
        fig.tight_layout()
        fig.savefig(folder / f"{script}_quality.png", dpi=100, metadata={"Software": None})
        plt.close(fig)
    strip(rs, folder / "strip.png", plt)


def grid_cells(path):
    """The cells of a torchvision grid (8 per row, padding 2), as PIL images in row-major order."""
    from PIL import Image

    image = Image.open(ROOT / path).convert("L")
    size = (image.width - 2) // 8 - 2
    rows = (image.height - 2) // (size + 2)
    return [[image.crop((2 + c * (size + 2), 2 + r * (size + 2), 2 + c * (size + 2) + size,
                         2 + r * (size + 2) + size)) for c in range(8)] for r in range(rows)]  # fmt: skip


def strip_runs(rs):
    """Per image model, the run its strip row shows: the newest defaults run with a grid, 8 minutes first."""
    chosen, on = {}, current_day(rs)
    for script in SCRIPTS[1:]:
        runs = [
            r for r in newest_first(of(rs, "quality", script))
            if ran_defaults(r) and r.get("grid") and measured(r) and day(r) == on
        ]  # fmt: skip
        runs.sort(key=lambda r: r.get("budget_min") != 8)  # stable: newest 8-minute run first
        if runs:
            chosen[script] = runs[0]
    return chosen


def block_strip(rs, base):
    runs = strip_runs(rs)
    days = sorted({day(r) for r in runs.values()})
    each = len(days) > 1  # one day and machine: said once; several: per row
    rows = ", ".join(
        f"{s}{then(r)} {r['budget_min']:g} min" + (f" ({r['date']}, {machine(r)})" if each else "")
        for s, r in runs.items()
    )
    on = "" if each else f" on {days[0][1]}, {days[0][0]}" if days else ""
    rel = "images/report/strip.png" if base.startswith("docs/") else f"{IMAGES}/strip.png"
    return (
        f"![samples, one row per model]({rel})\n\nThe last grid of each model's newest run with default "
        f"flags, trained by `benchmarks/quality.py` on 4,000 real MNIST digits{on}: {rows}."
    )


def strip(rs, path, plt):
    """One row of ten samples per image model, from the grid of its newest defaults run."""
    rows = []
    for script, r in strip_runs(rs).items():
        if (ROOT / r["grid"]).is_file():
            cells = grid_cells(r["grid"])
            pick = (
                [row[0] for row in cells]
                if script == "dcgan_classwise"
                else [c for row in cells for c in row]
            )
            rows.append((script, r, [c.resize((32, 32)) for c in pick[:10]]))
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(5.2, 0.62 * len(rows)))
    for ax, (script, r, cells) in zip(list(axes) if len(rows) > 1 else [axes], rows):
        import numpy as np

        ax.imshow(np.concatenate([np.asarray(c) for c in cells], axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(script, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.25, right=0.99, top=0.99, bottom=0.01, hspace=0.08)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a page is stale")
    args = parser.parse_args(argv)
    rs = records.load()
    stale = []
    for base, text in pages(rs).items():
        path = ROOT / base
        if not path.exists() or path.read_text() != text:
            stale.append(base)
            if not args.check:
                path.write_text(text)
    if args.check:
        if stale:
            print(f"stale (run python benchmarks/report.py): {', '.join(stale)}")
        return 1 if stale else 0
    figures(rs)
    print(f"rendered {len(rs)} records; rewrote: {', '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
