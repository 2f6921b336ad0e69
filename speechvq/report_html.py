"""report.html: one self-contained page per run that a person opens in a browser.

Everything is inline (images and audio as data: URLs, styles in the page), so the file can be mailed or copied
alone; nothing is fetched from the network. A few lines of inline script only record, on the page itself, how
many images and audio players loaded (the rendering test reads them)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .fileio import write_text
from .run_folder import RunFolder

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; } img { max-width: 100%; }
.pair { display: flex; gap: 2em; align-items: center; margin: .4em 0; } .note { color: #666; }
"""
SCRIPT = """
window.addEventListener("load", () => {
  const images = [...document.images].filter((image) => image.complete && image.naturalWidth > 0).length;
  const audios = [...document.querySelectorAll("audio")];
  const ready = () => audios.filter((audio) => audio.readyState >= 1 && audio.duration > 0).length;
  document.body.dataset.imagesLoaded = images;
  document.body.dataset.audioLoaded = ready();
  audios.forEach((audio) => audio.addEventListener("loadedmetadata", () => {
    document.body.dataset.audioLoaded = ready();
  }));
});
"""


def write_report(folder: RunFolder, rows: list[tuple[str, str]], metrics: dict) -> Path:
    """The page for the run in `folder` from its summary rows, metrics.json contents and figures."""
    sections = [
        _section("summary", "Summary", _table(None, [(name, _Text(value)) for name, value in rows])),
        _figure("usage", "Codebook usage", folder.usage_plot),
        _figure("phones", "Phones and units", folder.phone_unit_plot, _PHONES_NOTE),
        _section("abx", "ABX", _abx_table(metrics.get("abx"))),
        _section("robustness", "Robustness", _robustness_table(metrics.get("robustness"))),
        _figure("training", "Training curves", folder.loss_curve, "", "no train_encoder stage in this run"),
        _section("listening", "Listening", _audio_pairs(folder.resynth_dir)),
    ]
    page = (
        f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>speechvq report: "
        f"{html.escape(folder.root.name)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body>"
        f"<h1>speechvq run {html.escape(str(folder.root))}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    write_text(folder.report_html, page)
    return folder.report_html


_PHONES_NOTE = "P(phone | unit) over the aligned frames; units ordered by their dominant phone."


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{title}</h2>\n{body}\n</section>'


def _figure(anchor: str, title: str, path: Path, note: str = "", missing: str = "not made in this run") -> str:
    if not path.exists():
        return _section(anchor, title, f'<p class="note">{missing}</p>')
    data = base64.b64encode(path.read_bytes()).decode()
    caption = f'<p class="note">{note}</p>' if note else ""
    return _section(anchor, title, f'<img alt="{title}" src="data:image/png;base64,{data}">{caption}')


def _table(header: list[str] | None, rows: list[tuple]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td{_numeric(v)}>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>"


class _Text(str):
    """A summary value: shown as text, never right-aligned as a number."""


def _numeric(value) -> str:
    if isinstance(value, _Text):
        return ""
    numeric = isinstance(value, int | float) or str(value).rstrip(" %").replace(".", "").isdigit()
    return ' class="number"' if numeric else ""


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _abx_table(abx: dict | None) -> str:
    if not abx:
        return '<p class="note">no ABX: the run needs data.alignments and data.speakers</p>'
    rows = [
        (name, _percent(s["within_speaker_error"]), _percent(s["across_speaker_error"]), s["num_items"])
        for name, s in abx.items()
    ]
    note = '<p class="note">error rates (lower is better), triphone items, angular DTW (ZeroSpeech / libri-light)</p>'
    return _table(["input", "within speaker", "across speakers", "items"], rows) + note


def _robustness_table(robustness: dict | None) -> str:
    if not robustness:
        return '<p class="note">not computed (evaluate.robustness.num_files=0)</p>'
    rows = [(name, f"{r['unit_edit_distance']:.3f}", r["num_files"]) for name, r in robustness.items()]
    note = (
        '<p class="note">unit edit distance of deduplicated units, clean vs augmented (0: unchanged, 1: nothing '
        "kept)</p>"
    )
    return _table(["augmentation", "unit edit distance", "files"], rows) + note


def _audio_pairs(resynth_dir: Path) -> str:
    originals = sorted(resynth_dir.glob("*.original.wav")) if resynth_dir.exists() else []
    if not originals:
        why = "evaluate.resynthesize=0, or no log-mel inversion for these features"
        return f'<p class="note">no resynthesized examples ({why})</p>'
    pairs = []
    for original in originals:
        rebuilt = original.with_name(original.name.replace(".original.wav", ".units.wav"))
        players = [f"<span>{html.escape(original.name.removesuffix('.original.wav'))}</span>"]
        for label, path in (("original", original), ("from units (Griffin-Lim)", rebuilt)):
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode()
                players.append(f'<label>{label} <audio controls preload="metadata" src="data:audio/wav;base64,{data}">'
                               f"</audio></label>")  # fmt: skip
        pairs.append('<div class="pair">' + "".join(players) + "</div>")
    return "".join(pairs)
