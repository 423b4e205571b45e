"""Render the report's content (``build.collect``) as one self-contained HTML page.

Inline CSS (with A4 print rules), inline SVG charts, images as PNG data URIs: the page makes no request
of any kind when it is opened. Headline cells carry their exact value in ``data-value`` so a test can
check the page against metrics.json.
"""

from __future__ import annotations

from html import escape
from typing import Any

from masktune_core.report import svg

MODEL_LABELS = {"erm": "ERM", "masktune": "MaskTune", "difference": "MaskTune − ERM"}
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "worst_group_accuracy": "Worst-group accuracy",
    "worst_class_accuracy": "Worst-class accuracy",
}
METRIC_DEFINITIONS = {
    "accuracy": "the share of the split's images whose predicted class is right",
    "worst_group_accuracy": "the accuracy on the hardest group, where a group is a class together with "
    "the shortcut feature (for example: digits 0–4 without the square); it shows whether the model "
    "works when the shortcut is absent or misleading",
    "worst_class_accuracy": "the accuracy on the hardest class",
}
VERDICT_STYLE = {"helped": "good", "hurt": "bad", "no clear difference": "neutral"}

CSS = """
:root{--ink:#1d1d1f;--mute:#5f6368;--line:#dadce0;--good:#137333;--bad:#b3261e;--erm:#636efa;--mt:#ef553b}
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);
max-width:980px;margin:0 auto;padding:24px 28px;line-height:1.45;font-size:14px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:30px 0 4px;border-bottom:2px solid var(--line);
padding-bottom:3px}h3{font-size:15px;margin:16px 0 4px}
.caption{color:var(--mute);margin:2px 0 10px;font-style:italic}
.sub{color:var(--mute)}
table{border-collapse:collapse;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
th{background:#f6f8fa}
td.worst{background:#fde7e4;font-weight:600}
code,.cmd{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.cmd{background:#f6f8fa;border:1px solid var(--line);padding:8px;white-space:pre-wrap;word-break:break-all}
.verdict{border-left:6px solid var(--mute);background:#f6f8fa;padding:10px 14px;margin:10px 0}
.verdict.good{border-color:var(--good)}.verdict.bad{border-color:var(--bad);background:#fdecea}
.verdict .label{font-size:18px;font-weight:700}
.notice{border:1px solid #f1c232;background:#fff8e1;padding:8px 12px;margin:8px 0}
.tables{display:flex;flex-wrap:wrap;gap:0 28px}.tables table{break-inside:avoid}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts>div{flex:1 1 420px;min-width:0}
.example{display:flex;gap:12px;align-items:center;border-bottom:1px solid var(--line);padding:6px 0;
break-inside:avoid;page-break-inside:avoid}
.example img{image-rendering:pixelated;width:400px;max-width:60%;height:auto}
.example .meta{font-size:12.5px}
.wrong{color:var(--bad);font-weight:600}.right{color:var(--good);font-weight:600}
.tiles{display:flex;width:400px;max-width:60%;font-size:11.5px;color:var(--mute)}
.tiles span{flex:1;text-align:center}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:6px 0}
dt{color:var(--mute)}dd{margin:0}
ul.limits li{margin:4px 0}
footer{margin-top:30px;color:var(--mute);font-size:12px}
@page{size:A4;margin:14mm 12mm}
@media print{body{max-width:none;padding:0;font-size:11.5px}h2{break-after:avoid;page-break-after:avoid}
section{break-inside:auto}.charts>div,table,figure,.verdict{break-inside:avoid;page-break-inside:avoid}
.example img,.tiles{width:330px}a{color:inherit;text-decoration:none}}
"""


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def pp(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f} pp"


def _e(value: Any) -> str:
    return escape(str(value))


def _section(key: str, title: str, caption: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2><p class="caption">{_e(caption)}</p>{body}</section>'


def _notice(text: str) -> str:
    return f'<div class="notice">{_e(text)}</div>'


# ---------------------------------------------------------------------- 1. what was run
def setup_html(setup: dict[str, Any]) -> str:
    seeds = setup["seeds"]
    rows = [
        ("Dataset", setup["dataset"]),
        ("Backbone", setup["backbone"]),
        ("ERM training", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in setup["erm"].items())),
        (
            "MaskTune settings",
            ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in setup["masktune"].items()),
        ),
        ("Seed" + ("s" if len(seeds) > 1 else ""), ", ".join(str(s) for s in seeds)),
        ("Run" + ("s" if len(setup["runs"]) > 1 else ""), ", ".join(setup["runs"])),
        ("Date", setup["date"] or "–"),
        ("Versions", ", ".join(f"{k} {v}" for k, v in setup["versions"].items())),
    ]
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return (
        f"<dl>{items}</dl><h3>The command that reproduces it</h3>"
        f'<div class="cmd">{_e(setup["command"])}</div>'
    )


# ---------------------------------------------------------------------- 2. headline
def _value_cell(values: dict[str, Any] | None, key: str, diff: bool = False) -> str:
    if values is None:
        return "<td>–</td>"
    mean, std = values.get("mean"), values.get("std")
    text = pp(mean) if diff else pct(mean)
    if std is not None:
        text += f" ± {100 * std:.1f}"
    if diff and values.get("interval"):
        lo, hi = values["interval"]
        text += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f'<td data-key="{_e(key)}" data-value="{mean!r}">{_e(text)}</td>'


def headline_html(report: dict[str, Any]) -> str:
    head = report["headline"]
    if head is None:
        return _notice("No test numbers yet: the run has not reached its evaluate stage.")
    split = head["split"]
    study = report["kind"] == "study"
    n = report["summary"]["n_seeds"]
    header = "<tr><th>Metric</th><th>ERM</th><th>MaskTune</th><th>MaskTune − ERM</th></tr>"
    rows, notes = [], []
    for metric, values in head["metrics"].items():
        cells = "".join(
            _value_cell(values.get(m), f"{split}.{m}.{metric}", diff=m == "difference") for m in MODEL_LABELS
        )
        rows.append(f"<tr><td>{_e(METRIC_LABELS[metric])}</td>{cells}</tr>")
        notes.append(f"<li><b>{_e(METRIC_LABELS[metric])}</b>: {_e(METRIC_DEFINITIONS[metric])}.</li>")
    table = f'<table class="headline">{header}{"".join(rows)}</table>'
    if study:
        what = (
            f"Mean ± sample standard deviation over {n} seeds; the difference is paired per seed, with its "
            "95 % t-interval over seeds in brackets."
        )
    else:
        what = "One seed: a single training run, so these numbers carry no measure of their spread."
    parts = [
        f"<p>On the <code>{_e(split)}</code> split (the main test split, never used for any choice). "
        f"{_e(what)}</p>",
        table,
        f"<ul>{''.join(notes)}</ul>",
        "<p>The ERM checkpoint was selected on the <code>val</code> split.</p>",
    ]
    if study:
        parts.append(_strip_charts(report))
    parts.append(verdict_html(report["verdict"]))
    return "".join(parts)


def _strip_charts(report: dict[str, Any]) -> str:
    head = report["headline"]
    charts = []
    for metric, values in head["metrics"].items():
        columns = [
            (MODEL_LABELS[m], values[m]["values"], svg.COLORS[m]) for m in ("erm", "masktune") if m in values
        ]
        axes = svg.Axes(
            f"{METRIC_LABELS[metric]} on {head['split']}, one point per seed",
            "",
            METRIC_LABELS[metric],
            y_range=(0.0, 1.0),
            percent_y=True,
        )
        charts.append(f"<div>{svg.strip_chart(axes, columns)}</div>")
    return (
        f'<div class="charts">{"".join(charts)}</div>'
        '<p class="caption">Each dot is one seed; the black bar is the mean over seeds.</p>'
    )


def verdict_html(section: dict[str, Any]) -> str:
    verdict = section["verdict"]
    if verdict is None:
        body = (
            '<div class="verdict"><span class="label">No verdict recorded.</span> The run\'s metrics hold '
            "none (runs made before verdicts were recorded have none), and the report does not compute one "
            "afterwards.</div>"
        )
    else:
        style = VERDICT_STYLE.get(verdict["label"], "neutral")
        lo, hi = verdict["interval"]
        basis = (
            f"{verdict.get('seeds')} seeds, t-interval over seeds"
            if section["source"] == "seeds"
            else f"bootstrap over val samples, {verdict.get('resamples', '?')} resamples"
        )
        label = {
            "helped": "MaskTune helped",
            "hurt": "MaskTune hurt",
            "no clear difference": "No clear difference",
        }
        body = (
            f'<div class="verdict {style}"><span class="label">Verdict: '
            f"{_e(label.get(verdict['label'], verdict['label']))}"
            f"</span><br>{_e(verdict['text'])}<br><span class='sub'>Judged on "
            f"<code>{_e(verdict['split'])}</code> "
            f"{_e(verdict['metric'].replace('_', ' '))}: ERM {pct(verdict['erm'])}, MaskTune "
            f"{pct(verdict['masktune'])}, "
            f"difference {pp(verdict['difference'])}, {round(100 * verdict['confidence'])} % interval "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp ({_e(basis)}). Recommended model: "
            f"{_e(MODEL_LABELS.get(verdict['recommendation'], verdict['recommendation']))}.</span></div>"
        )
    candidates = section.get("candidates")
    if candidates:
        splits = list(candidates[0].get("splits", {}))
        header = (
            "<tr><th>Candidate</th><th>Settings</th>"
            + "".join(f"<th>{_e(s)} acc</th><th>{_e(s)} worst-group</th>" for s in splits)
            + "</tr>"
        )
        rows = []
        for c in candidates:
            settings = ", ".join(f"{k} {v}" for k, v in (c.get("settings") or {}).items())
            cells = "".join(
                f"<td>{pct(c['splits'].get(s, {}).get('accuracy'))}</td>"
                f"<td>{pct(c['splits'].get(s, {}).get('worst_group_accuracy'))}</td>"
                for s in splits
            )
            mark = " (selected)" if c.get("selected") else ""
            rows.append(f"<tr><td>{_e(c['name'])}{mark}</td><td>{_e(settings)}</td>{cells}</tr>")
        body += (
            "<h3>Finetune candidates</h3><p class='caption'>Each candidate finetuned the same ERM model on "
            "the "
            "same masks; validation chose one, and every candidate's numbers are shown so nothing is "
            "hidden.</p>"
            f"<table>{header}{''.join(rows)}</table>"
        )
    return body


# ---------------------------------------------------------------------- 3. tables
def tables_html(tables: dict[str, Any] | None, study: bool) -> str:
    if not tables:
        return _notice("No per-group or per-class numbers: the run has not reached its evaluate stage.")
    parts = []
    for split, both in tables.items():
        parts.append("<div class='tables'>")  # a split's group and class tables side by side
        for kind, table in (("group", both["groups"]), ("class", both["classes"])):
            if table is None:
                continue
            models = table["models"]
            header = (
                f"<tr><th>{kind.title()}</th><th>images</th>"
                + "".join(f"<th>{MODEL_LABELS[m]}</th>" for m in models)
                + "</tr>"
            )
            rows = []
            for row in table["rows"]:
                worst = {m for m in models if row["name"] in table["worst"].get(m, [])}
                cells = "".join(
                    f'<td class="{"worst" if m in worst else ""}">{pct(row[m])}</td>' for m in models
                )
                rows.append(f"<tr><td>{_e(row['name'])}</td><td>{_e(row['n'])}</td>{cells}</tr>")
            mean = " (mean over seeds)" if study else ""
            parts.append(
                f"<div><h3>Per {kind} on <code>{_e(split)}</code>{mean}</h3>"
                f"<table>{header}{''.join(rows)}</table></div>"
            )
        parts.append("</div>")
    parts.append("<p class='sub'>A shaded cell is that model's worst group or class on the split.</p>")
    return "".join(parts)


# ---------------------------------------------------------------------- 4. gallery
def gallery_html(gallery: dict[str, Any] | None) -> str:
    if gallery is None:
        return _notice("No gallery: the run has no MaskTune model, masks or test predictions yet.")
    parts = []
    heads = "".join(f"<span>{t}</span>" for t in ("original", "ERM heatmap", "masked", "MaskTune heatmap"))
    for category, title in gallery["categories"].items():
        examples = [e for e in gallery["examples"] if e["category"] == category]
        if not examples:
            continue
        parts.append(f"<h3>{_e(title)}</h3><div class='tiles'>{heads}</div>")
        for e in examples:
            preds = []
            for m in ("erm", "masktune"):
                ok = e[f"{m}_prediction"] == e["label"]
                preds.append(
                    f"{MODEL_LABELS[m]}: <span "
                    f"class='{'right' if ok else 'wrong'}'>{_e(e[f'{m}_prediction'])}</span> "
                    f"({pct(e[f'{m}_confidence'], 0)} sure)"
                )
            group = f"<br>group {_e(e['group'])}" if e.get("group") else ""
            parts.append(
                f"<div class='example'><img src='{e['image']}' alt='{_e(category)} example {e['index']}'>"
                f"<div class='meta'>true class <b>{_e(e['label'])}</b>{group}<br>{'<br>'.join(preds)}<br>"
                f"<span class='sub'>{_e(e['split'])} image #{e['index']}, {pct(e['masked_area'], 0)} "
                "masked</span>"
                "</div></div>"
            )
    areas = gallery["mask_area"]
    bars = [(name, value, "#444") for name, value in areas.items()]
    chart = svg.bar_chart(
        svg.Axes("Mean masked area per training group", "", "share of pixels masked", percent_y=True), bars
    )
    parts.append(
        "<h3>Mask statistics</h3><p class='caption'>How much of each training image the masks hid, on "
        "average, "
        "per group: a shortcut that sits in one group shows as a difference here.</p><div "
        f"class='charts'><div>{chart}</div></div>"
    )
    return "".join(parts)


# ---------------------------------------------------------------------- 5. selective
def selective_html(sel: dict[str, Any] | None) -> str:
    if sel is None:
        return _notice("No selective classification: the run has no saved test predictions of both models.")
    test = sel["test_split"]
    test_points = [p for p in sel["points"] if p["split"] == test]
    series_rc, series_ar = [], []
    for split, color, dashed in (("val", svg.COLORS["val"], True), (test, svg.COLORS["test"], False)):
        c = sel["curves"][split]
        aurc = "" if c["aurc"] is None else f" (AURC [0, 1] {c['aurc']:.3f})"
        series_rc.append(svg.Series(f"{split}{aurc}", c["coverage"], c["risk"], color, dashed))
        series_ar.append(svg.Series(split, [1 - x for x in c["coverage"]], c["accuracy"], color, dashed))
    markers_rc = [
        svg.Marker(p["coverage"], 1 - p["accuracy_on_accepted"], p["name"])
        for p in test_points
        if p["on_curve"] and p["coverage"] and p["accuracy_on_accepted"] is not None
    ]
    markers_ar = [svg.Marker(1 - m.x, 1 - m.y, m.label) for m in markers_rc]
    rc = svg.line_chart(
        svg.Axes(
            "Risk–coverage",
            "coverage (share of images answered)",
            "error on answered images",
            x_range=(0.0, 1.0),
            percent_x=True,
            percent_y=True,
        ),
        series_rc,
        markers_rc,
    )
    ar = svg.line_chart(
        svg.Axes(
            "Accuracy–rejection",
            "rejection rate (share of images refused)",
            "accuracy on answered images",
            x_range=(0.0, 1.0),
            percent_x=True,
            percent_y=True,
        ),
        series_ar,
        markers_ar,
    )
    fitted = (
        "saved threshold sets"
        if sel["source"] == "saved"
        else "thresholds fitted on val to 95, 90 and 80 % target coverage (no set was saved)"
    )
    header = (
        "<tr><th>Operating point</th><th>Rule</th><th>Split</th><th>Coverage</th>"
        "<th>Accuracy on accepted</th><th>Agreement rate</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{_e(p['name'])}</td><td>{_e(p['rule'])}</td><td>{_e(p['split'])}</td><td>{pct(p['coverage'])}</td>"
        f"<td>{pct(p['accuracy_on_accepted'])}</td><td>{pct(p['agreement_rate'])}</td></tr>"
        for p in sel["points"]
    )
    notes = []
    if any(not p["on_curve"] for p in sel["points"]):
        notes.append(
            "Saved sets of another rule, or with per-class thresholds or weights, are in the table only: "
            "they do not lie on these curves."
        )
    if sel["skipped_sets"] and sel["source"] == "saved":
        notes.append(f"{sel['skipped_sets']} saved set(s) could not be read and are left out.")
    elif sel["skipped_sets"]:
        notes.append(f"{sel['skipped_sets']} saved set(s) could not be read, so targets are shown instead.")
    extra = "".join(f"<p class='sub'>{_e(n)}</p>" for n in notes)
    return extra + (
        f"<p>Rule: <b>{_e(sel['rule'])}</b>: {_e(sel['rule_definition'])} Points on the charts are "
        f"{_e(fitted)}, "
        f"fitted on <code>val</code> and reported on <code>{_e(test)}</code>.</p>"
        f"<div class='charts'><div>{rc}</div><div>{ar}</div></div>"
        f"<table>{header}{rows}</table>"
        "<p class='sub'>Coverage: share of images answered. Accuracy on accepted: accuracy over the "
        "answered images "
        "only. Agreement rate: share of images where ERM and MaskTune predict the same class.</p>"
    )


# ---------------------------------------------------------------------- 6. training
def training_html(training: dict[str, Any] | None) -> str:
    if training is None:
        return _notice("No training curves were recorded.")
    colors = {"erm": svg.COLORS["erm"], "randmask": svg.COLORS["randmask"]}
    marks = [(float(training["erm_epochs"]), "finetune")] if training["erm_epochs"] else []

    def series(curves: dict[str, list[list[float]]]) -> list[svg.Series]:
        return [
            svg.Series(
                stage.replace("_", " "),
                [p[0] for p in pts],
                [p[1] for p in pts],
                colors.get(stage, svg.COLORS["masktune"]),
                stage == "randmask",
            )
            for stage, pts in curves.items()
            if pts
        ]

    loss = svg.line_chart(svg.Axes("Training loss", "epoch", "loss", vlines=marks), series(training["loss"]))
    val = svg.line_chart(
        svg.Axes(
            "Validation accuracy after each epoch", "epoch", "val accuracy", percent_y=True, vlines=marks
        ),
        series(training["val_accuracy"]),
    )
    seconds = training["seconds"]
    bars = [(stage.replace("_", " "), value, "#5f6368") for stage, value in seconds.items()]
    timing = svg.bar_chart(
        svg.Axes(f"Seconds per stage (total {sum(seconds.values()):.0f} s)", "", "seconds"), bars
    )
    return f"<div class='charts'><div>{loss}</div><div>{val}</div><div>{timing}</div></div>"


# ---------------------------------------------------------------------- 7. limits
def limits_html(limits: list[str]) -> str:
    if not limits:
        return "<p>Nothing to flag.</p>"
    return "<ul class='limits'>" + "".join(f"<li>{_e(note)}</li>" for note in limits) + "</ul>"


SECTIONS = (
    (
        "setup",
        "1. What was run",
        "The data, the model and the settings, and the command that makes the same run again.",
    ),
    (
        "headline",
        "2. The headline",
        "How often each model is right on images it never saw, and whether MaskTune made "
        "things better, worse, or made no clear difference.",
    ),
    (
        "tables",
        "3. Per group and per class",
        "The same accuracy broken down by group and by class, because a model can "
        "look good on average while failing one group.",
    ),
    (
        "gallery",
        "4. What the model looked at",
        "Heatmaps show where each model looked (red is strongest); MaskTune "
        "hides what the first model relied on most and retrains on what is left.",
    ),
    (
        "selective",
        "5. Selective classification",
        "Letting the models refuse doubtful images: the fewer images they "
        "answer, the fewer mistakes they make on those they do answer.",
    ),
    ("training", "6. Training", "How the models learned over time, and how long each step took."),
    ("limits", "7. Limits", "What a careful reader should know before trusting these numbers."),
)


def render(report: dict[str, Any]) -> str:
    study = report["kind"] == "study"
    bodies = {
        "setup": setup_html(report["setup"]),
        "headline": headline_html(report),
        "tables": tables_html(report["tables"], study),
        "gallery": gallery_html(report["gallery"]),
        "selective": selective_html(report["selective"]),
        "training": training_html(report["training"]),
        "limits": limits_html(report["limits"]),
    }
    sections = "".join(_section(key, title, caption, bodies[key]) for key, title, caption in SECTIONS)
    kind = f"seed study of {report['summary']['n_seeds']} runs" if study else "one run"
    partial = (
        ""
        if not any("not finished" in n for n in report["limits"])
        else _notice("This run is not finished: this is a partial report. Section 7 says what is missing.")
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>MaskTune report: {_e(report['title'])}</title><style>{CSS}{svg.CSS}</style></head><body>"
        f"<h1>MaskTune report: {_e(report['title'])}</h1>"
        f"<p class='sub'>{_e(kind)} · {_e(report['setup']['dataset'])} / {_e(report['setup']['backbone'])} · "
        f"generated {_e(report['generated'])}</p>{partial}"
        "<p>MaskTune is a way to stop an image classifier from relying on a shortcut, such as a coloured "
        "mark that "
        "happens to come with one class in the training images. It trains a normal model (ERM), finds the "
        "image "
        "regions that model relied on most, hides them, and retrains briefly on the hidden copies so that "
        "the model "
        "must use the rest of the image.</p>"
        f"{sections}<footer>Written by masktune_core report; this file needs no network and no "
        "server.</footer>"
        "</body></html>"
    )


def _plain(value: object) -> str:
    """A setting as a reader writes it: a list as values joined by "/" (the settings are comma-separated)."""
    return "/".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
