"""The summary table printed at the end of a run."""

from __future__ import annotations


def format_report(result) -> str:
    """result: a pipeline.RunSummary."""
    rows = summary_rows(result)
    if getattr(result, "report", None):
        rows.append(("report (open in a browser)", str(result.report)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def summary_rows(result) -> list[tuple[str, str]]:
    """(name, value) rows of the summary table; result: a pipeline.RunSummary."""
    rows: list[tuple[str, str]] = [("run folder", str(result.run_dir))]
    for stage, seconds in result.stage_seconds.items():
        rows.append((f"time {stage}", f"{seconds:.1f} s"))
    if result.counts:
        rows.append(
            (
                "files found / processed / skipped",
                f"{result.counts.get('found')} / {result.counts.get('processed')} / {result.counts.get('skipped')}",
            )
        )
    m = result.metrics
    if m:
        rows += [
            ("utterances / frames", f"{m['num_utterances']} / {m['num_frames']} ({m['duration_s']:.1f} s)"),
            ("codebook", f"K={m['codebook_size']} fingerprint {m['codebook_fingerprint']}"),
            ("MSE / relative MSE", f"{m['mse']:.4g} / {m['relative_mse']:.4f}"),
            ("SQNR", f"{m['sqnr_db']:.2f} dB"),
            ("usage (dead codes)", f"{m['usage']:.3f} ({m['dead_codes']})"),
            ("perplexity / entropy", f"{m['perplexity']:.1f} / {m['entropy_bits']:.3f} bits/frame"),
            ("bitrate fixed / entropy", f"{m['bitrate_bps']:.0f} / {m['entropy_bitrate_bps']:.0f} bit/s"),
            ("after dedup", f"{m['dedup_units_per_s']:.1f} units/s, {m['dedup_bitrate_bps']:.0f} bit/s"),
        ]
        if "reconstruction" in m:
            r = m["reconstruction"]
            rows.append(("log-mel L1 (un-quantized)", f"{r['logmel_l1']:.3f} ({r['unquantized']['logmel_l1']:.3f})"))
            if "mcd_db" in r:
                rows.append(("mel-cepstral distortion", f"{r['mcd_db']:.2f} dB"))
        if "alignment" in m:
            rows += _alignment_rows("", m["alignment"])
            for group, scores in m["alignment"].get("groups", {}).items():
                rows += _alignment_rows(f" {group}/", scores)
        if "word_probe" in m:
            p = m["word_probe"]
            rows.append(
                (
                    "word probe (chance)",
                    f"{p['accuracy']:.3f} ({p['chance']:.2f}), {p['num_utterances']} utterances, "
                    f"{p['num_speakers']} speakers",
                )
            )
        for name, scores in m.get("abx", {}).items():
            rows.append((f"ABX error within / across ({name})", _abx_text(scores)))
        if "robustness" in m:
            ued = "  ".join(f"{k} {v['unit_edit_distance']:.2f}" for k, v in m["robustness"].items())
            rows.append(("unit edit distance", ued))
    return rows


def _alignment_rows(suffix: str, scores: dict) -> list[tuple[str, str]]:
    return [
        (f"aligned utterances / phones{suffix}", f"{scores['num_utterances']} / {scores['num_phones']}"),
        (f"PNMI{suffix}", f"{scores['pnmi']:.4f}"),
        (f"phone purity / cluster purity{suffix}", f"{scores['phone_purity']:.4f} / {scores['cluster_purity']:.4f}"),
    ]


def _abx_text(scores: dict) -> str:
    def percent(value):
        return "n/a" if value is None else f"{100 * value:.2f} %"

    return f"{percent(scores['within_speaker_error'])} / {percent(scores['across_speaker_error'])}"
