"""The summary table printed at the end of a run."""

from __future__ import annotations


def format_report(result) -> str:
    """result: a pipeline.RunSummary."""
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
            a = m["alignment"]
            rows += [
                ("aligned utterances / phones", f"{a['num_utterances']} / {a['num_phones']}"),
                ("PNMI", f"{a['pnmi']:.4f}"),
                ("phone purity / cluster purity", f"{a['phone_purity']:.4f} / {a['cluster_purity']:.4f}"),
            ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
