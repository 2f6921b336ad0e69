"""The evaluate stage: quantization, usage and bitrate metrics, phone-label scores (PNMI) and log-mel
reconstruction metrics, from the run folder's features and units."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import io
from .alignments import read_alignments
from .artifacts import (
    METRICS_FILE,
    UNITS_META_FILE,
    USAGE_PLOT_FILE,
    RunResult,
    open_features,
    stream_names,
    unit_model,
)
from .config import RunConfig
from .data import iter_waveforms
from .errors import AlignmentError, ConfigError, MissingArtifactError
from .metrics import MetricsAccumulator, phone_unit_scores
from .plots import plot_codebook_usage
from .reconstruct import build_reconstructor, griffin_lim, logmel_distances, mel_cepstral_distortion, reference_logmel
from .types import FeatureMatrix, Utterance

log = logging.getLogger(__name__)


def evaluate(config: RunConfig, result: RunResult, device: torch.device) -> None:
    if config.evaluate.alignment_tolerance_frames < 0:
        raise ConfigError("evaluate.alignment_tolerance_frames", config.evaluate.alignment_tolerance_frames, ">= 0")
    store = open_features(result)
    units_model = unit_model(config, result)
    units_model.check_compatible(store.feature_config, store.dim)
    meta_path = result.run_dir / UNITS_META_FILE
    if not meta_path.exists():
        raise MissingArtifactError(meta_path, "evaluate")
    meta = json.loads(meta_path.read_text())
    if meta["codebook_fingerprint"] != units_model.fingerprint:
        raise ConfigError(
            "codebook",
            units_model.fingerprint,
            f"the units in {result.run_dir} were made with {meta['codebook_fingerprint']}; re-run quantize",
        )
    alignments = (
        read_alignments(config.data.alignments, config.data.alignment_rate_hz) if config.data.alignments else {}
    )
    phones: dict[str, int] = {}
    joint: list[tuple[torch.Tensor, torch.Tensor]] = []
    accumulator = MetricsAccumulator(units_model.codebook_size, units_model.num_codebooks, store.frame_rate_hz)
    recon = ReconstructionAccumulator.create(config, result, store, units_model)
    streams = [(result.run_dir / name).open() for name in stream_names(config.data.split, units_model.num_codebooks)]
    try:
        waveforms = recon.waveforms() if recon else None
        for features in tqdm(
            store.iter_utterances(), total=len(store.utterances), desc="evaluate", unit="utt", disable=None
        ):
            units = (
                torch.tensor([[int(u) for u in handle.readline().split()] for handle in streams], dtype=torch.long)
                .reshape(len(streams), -1)
                .T
            )
            if units.shape[0] != features.num_frames:
                raise ConfigError(
                    "data.split",
                    config.data.split,
                    f"units do not match the features at {features.utt_id!r}; re-run quantize",
                )
            quantized = units_model.lookup(units)
            accumulator.add(units_model.normalize(features.frames), quantized, units)
            if recon:
                recon.add(features, quantized, next(waveforms))
            if features.utt_id in alignments:
                joint.append(
                    _paired_labels(
                        features.utt_id, units[:, 0], alignments[features.utt_id], phones, store.frame_rate_hz, config
                    )
                )
    finally:
        for handle in streams:
            handle.close()
    metrics = {"codebook_fingerprint": units_model.fingerprint, "quantizer": units_model.kind, **accumulator.result()}
    if recon:
        metrics["reconstruction"] = recon.summary()
    if joint:
        phone_ids = torch.cat([p for p, _ in joint])
        unit_ids = torch.cat([u for _, u in joint])
        counts = torch.zeros(len(phones), units_model.codebook_size, dtype=torch.long)
        counts.index_put_((phone_ids, unit_ids), torch.ones_like(unit_ids), accumulate=True)
        metrics["alignment"] = {
            "num_utterances": len(joint),
            "num_frames": int(unit_ids.numel()),
            "num_phones": len(phones),
            "stream": 0,
            **phone_unit_scores(counts),
        }
    elif alignments:
        raise AlignmentError(config.data.alignments, "no utterance id matches the dataset's ids")
    metrics["counts"] = result.counts
    io.write_json(result.run_dir / METRICS_FILE, metrics)
    if config.evaluate.plot:
        plot_codebook_usage(
            accumulator.counts[0],
            result.run_dir / USAGE_PLOT_FILE,
            f"codebook usage: {metrics['codes_used']}/{metrics['codebook_size']} codes, "
            f"perplexity {metrics['perplexity']:.1f}",
        )
    result.metrics = metrics


class ReconstructionAccumulator:
    """Log-mel distances between the reference log-mel of the audio and the log-mel rebuilt from the units
    (and from the unquantized features, to isolate what quantization loses); MCD for Kaldi MFCC; and the
    first evaluate.resynthesize utterances written as Griffin-Lim WAVs."""

    def __init__(self, config, result, store, units_model, reconstructor):
        self.config, self.result, self.store, self.units_model = config, result, store, units_model
        self.reconstruct = reconstructor
        self.sums = {"quantized": {}, "unquantized": {}}
        self.mcd_sum, self.mcd_frames, self.written = 0.0, 0, 0
        self.is_kaldi_mfcc = store.feature_config["name"] == "mfcc_hubert"

    @classmethod
    def create(cls, config, result, store, units_model):
        if not config.evaluate.reconstruction:
            return None
        decoder = None
        if store.feature_config["name"] == "conv_encoder":
            from .learned.train import load_vqvae

            decoder = load_vqvae(store.feature_config["checkpoint"])[0].decoder
        reconstructor = build_reconstructor(store.feature_config, decoder)
        if reconstructor is None:
            log.info("evaluate: no log-mel reconstruction is defined for %s features", store.feature_config["name"])
            return None
        return cls(config, result, store, units_model, reconstructor)

    def waveforms(self):
        """The audio of the stored utterances, in order, from the run's <split>.tsv."""
        lines = (self.result.run_dir / f"{self.config.data.split}.tsv").read_text().splitlines()
        root = Path(lines[0])
        listing = [
            Utterance(entry.utt_id, root / line.split("\t")[0])
            for entry, line in zip(self.store.utterances, lines[1:], strict=True)
        ]
        rate = self.store.feature_config["sample_rate"]
        return iter_waveforms(listing, rate, self.config.data.num_workers, "raise", [])

    def add(self, features: FeatureMatrix, quantized: torch.Tensor, waveform) -> None:
        reference = reference_logmel(waveform.samples, waveform.sample_rate)
        raw_quantized = self.units_model.denormalize(quantized)
        estimate = self.reconstruct(raw_quantized)
        for key, rebuilt in (("quantized", estimate), ("unquantized", self.reconstruct(features.frames))):
            for name, value in logmel_distances(reference, rebuilt).items():
                self.sums[key][name] = self.sums[key].get(name, 0.0) + value
        if self.is_kaldi_mfcc:
            ceps, bins = self.store.feature_config["num_ceps"], self.store.feature_config["num_mel_bins"]
            mcd = mel_cepstral_distortion(features.frames[:, :ceps], raw_quantized[:, :ceps], bins)
            self.mcd_sum += float(mcd.sum())
            self.mcd_frames += mcd.numel()
        if self.written < self.config.evaluate.resynthesize and reference.shape[0] > 0:
            folder = self.result.run_dir / "resynth"
            stem = f"{self.written:03d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", features.utt_id)[:80]
            rate = waveform.sample_rate
            io.write_wav(folder / f"{stem}.original.wav", waveform.samples, rate)
            io.write_wav(folder / f"{stem}.units.wav", griffin_lim(estimate[: reference.shape[0]], rate), rate)
            self.written += 1

    def summary(self) -> dict:
        def finish(sums):
            n = max(sums.get("elements", 0), 1)
            return {
                "logmel_l1": sums["l1_sum"] / n,
                "logmel_l2": sums["l2_sum"] / n,
                "spectral_convergence": math.sqrt(sums["sc_num"] / max(sums["sc_den"], 1e-30)),
            }

        out = {**finish(self.sums["quantized"]), "unquantized": finish(self.sums["unquantized"])}
        if self.mcd_frames:
            out["mcd_db"] = self.mcd_sum / self.mcd_frames
        if self.written:
            out["resynthesized"] = self.written
        return out


def _paired_labels(utt_id, units, labels, phones, unit_rate_hz, config) -> tuple[torch.Tensor, torch.Tensor]:
    """Map each unit frame to the label frame at the same time; trim the small length difference
    that framing conventions leave, and refuse a larger one (a sign of mismatched files)."""
    ratio = config.data.alignment_rate_hz / unit_rate_hz
    expected = round(len(labels) / ratio)
    if abs(expected - units.numel()) > config.evaluate.alignment_tolerance_frames:
        raise AlignmentError(
            utt_id,
            f"{len(labels)} labels at {config.data.alignment_rate_hz} Hz cover "
            f"{expected} unit frames, but there are {units.numel()}",
        )
    label_index = (torch.arange(units.numel()) * ratio).long()
    keep = label_index < len(labels)
    phone_ids = torch.tensor(
        [phones.setdefault(labels[i], len(phones)) for i in label_index[keep].tolist()], dtype=torch.long
    )
    return phone_ids, units[keep]
