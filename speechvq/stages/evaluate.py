"""The evaluate stage: quantization, usage and bitrate metrics, phone-label scores (PNMI) and log-mel
reconstruction metrics, from the run folder's features and units."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import fileio
from ..abx import AbxItem, abx_error_rates, items_from_labels, read_speakers
from ..alignments import read_alignments
from ..config import (
    AbxConfig,
    CodebookConfig,
    DataConfig,
    EvaluateConfig,
    FeatureConfig,
    QuantizeConfig,
    RobustnessConfig,
)
from ..data import iter_waveforms
from ..errors import AlignmentError, ConfigError
from ..ids import IdMatch, match_ids, require_match
from ..metrics import MetricsAccumulator, phone_unit_scores
from ..plots import plot_codebook_usage, plot_phone_unit_heatmap
from ..probe import word_pattern, word_probe
from ..reconstruct import build_inversion, griffin_lim, logmel_distances, reference_logmel
from ..records import FeatureMatrix
from ..robustness import unit_robustness
from ..run_folder import RunFolder
from ..units import load_unit_model
from .sources import frame_source, processed_utterances

log = logging.getLogger(__name__)


def evaluate(
    evaluate: EvaluateConfig,
    data: DataConfig,
    features: FeatureConfig,
    codebook: CodebookConfig,
    quantize: QuantizeConfig,
    folder: RunFolder,
    device: torch.device,
    report_to: RunFolder | None = None,
) -> dict:
    """metrics.json (returned too) and the figures. report_to: under torchrun, each rank scans its own rank
    folder, the collected sums and per-utterance scores are gathered to rank 0 in rank (= dataset) order, and
    rank 0 writes the metrics of the whole dataset into report_to (other ranks return {}). The frames are the
    stored ones, or (features.store=sample|none) extracted again from the audio of the run's manifest."""
    if evaluate.alignment_tolerance_frames < 0:
        raise ConfigError("evaluate.alignment_tolerance_frames", evaluate.alignment_tolerance_frames, ">= 0")
    source = frame_source(data, features, folder, device, "evaluate")
    units_model = load_unit_model(codebook, quantize, folder)
    units_model.check_compatible(source.feature_config, source.dim)
    _check_units_made_by(folder, units_model.fingerprint)
    matched = _alignments(data, _dataset_ids(source, every_rank=report_to is not None))
    alignments = matched.by_id if matched else {}
    found = _Collected.create(evaluate, data, source, folder, units_model, alignments)
    _scan(source, folder, data.split, units_model, alignments, found)
    if report_to is not None:
        found = _gathered(found)
        if found is None:
            return {}
        # the report folder holds the merged run: the whole dataset's manifest, not this rank's shard
        folder, data = report_to, dataclasses.replace(data, num_shards=1, shard_index=0)
    metrics = {"codebook_fingerprint": units_model.fingerprint, "quantizer": units_model.kind, **found.metrics.result()}
    if found.recon:
        metrics["reconstruction"] = found.recon.summary()
    if found.phones.pairs:
        metrics["alignment"] = found.phones.scores(units_model.codebook_size)
    elif matched:
        raise AlignmentError(data.alignments, matched.mismatch())
    if probe_scores := found.probe.result():
        metrics["word_probe"] = probe_scores
    if abx_scores := found.abx.result(source.frame_rate_hz):
        metrics["abx"] = abx_scores
    if evaluate.robustness.num_files:
        metrics["robustness"] = _robustness(evaluate.robustness, data, source, folder, units_model, device)
    metrics["counts"] = folder.read_units_meta().counts.to_dict()
    folder.write_metrics(metrics)
    if evaluate.plot:
        _plots(folder, found.metrics, found.phones, metrics)
    return metrics


def _dataset_ids(source, every_rank: bool) -> list[str]:
    """The ids of this run's utterances; under torchrun every rank's (the ABX items on rank 0 span all shards)."""
    ids = [stored.utt_id for stored in source.utterances]
    if not every_rank:
        return ids
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, ids)
    return [utt_id for part in parts for utt_id in part]


def _alignments(data: DataConfig, dataset_ids: list[str]) -> IdMatch | None:
    """data.alignments keyed by the dataset's ids (by file stem where no id matches); None without alignments."""
    if not data.alignments:
        return None
    labels = read_alignments(data.alignments, data.alignment_rate_hz)
    return match_ids(labels, dataset_ids, f"data.alignments={data.alignments}")


@dataclass
class _Collected:
    """What one pass over the utterances collects; `merge` adds another rank's (utterances after ours)."""

    metrics: MetricsAccumulator
    phones: _PhoneCounts
    recon: _Reconstruction | None
    probe: _WordProbe
    abx: _Abx

    @classmethod
    def create(cls, evaluate: EvaluateConfig, data: DataConfig, source, folder, units_model, alignments) -> _Collected:
        return cls(
            MetricsAccumulator(units_model.codebook_size, units_model.num_codebooks, source.frame_rate_hz),
            _PhoneCounts(data.alignment_rate_hz / source.frame_rate_hz, evaluate.alignment_tolerance_frames),
            _Reconstruction.create(evaluate, data, source, folder, units_model),
            _WordProbe(word_pattern(evaluate.word_probe) if evaluate.word_probe else None),
            _Abx.create(evaluate.abx, data, alignments, units_model.codebook_size),
        )

    def portable(self) -> dict:
        """The plain sums and per-utterance values, for sending to rank 0."""
        recon = self.recon.totals() if self.recon else None
        phones = (self.phones.phones, self.phones.pairs, self.phones.groups)
        return {"metrics": self.metrics, "phones": phones, "recon": recon, "probe": self.probe.units,
                "abx": self.abx.frames}  # fmt: skip

    def merge(self, other: dict) -> None:
        self.metrics.merge(other["metrics"])
        self.phones.merge(*other["phones"])
        if self.recon and other["recon"]:
            self.recon.merge(other["recon"])
        self.probe.units.update(other["probe"])
        for name, frames in other["abx"].items():
            self.abx.frames[name].update(frames)


def _gathered(found: _Collected) -> _Collected | None:
    """Every rank's collection gathered on rank 0, merged in rank order; None on the other ranks."""
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, found.portable())
    if torch.distributed.get_rank() != 0:
        return None
    for part in parts[1:]:
        found.merge(part)
    return found


def _scan(source, folder: RunFolder, split: str, units_model, alignments, found: _Collected) -> None:
    unit_lines = folder.iter_units(split, units_model.num_codebooks)
    for features in tqdm(
        source.iter_utterances(), total=len(source.utterances), desc="evaluate", unit="utt", disable=None
    ):
        streams = next(unit_lines, [[]] * units_model.num_codebooks)  # a missing line is a mismatch below
        units = torch.tensor(streams, dtype=torch.long).reshape(len(streams), -1).T  # (frames, num_codebooks)
        if units.shape[0] != features.num_frames:
            raise ConfigError("data.split", split, f"units do not match the features at {features.utt_id!r}")
        quantized, normalized = units_model.lookup(units), units_model.normalize(features.frames)
        found.metrics.add(normalized, quantized, units)
        found.abx.add(features.utt_id, normalized, units, quantized)
        if found.recon:
            found.recon.add(features, quantized)
        if features.utt_id in alignments:
            found.phones.add(features.utt_id, units[:, 0], alignments[features.utt_id])
        found.probe.add(features.utt_id, units[:, 0])
    if next(unit_lines, None) is not None:
        raise ConfigError("data.split", split, "the unit files hold more utterances than the features")


def _plots(folder: RunFolder, accumulator: MetricsAccumulator, phones: _PhoneCounts, metrics: dict) -> None:
    plot_codebook_usage(
        accumulator.counts[0],
        folder.usage_plot,
        f"codebook usage: {metrics['codes_used']}/{metrics['codebook_size']} codes, "
        f"perplexity {metrics['perplexity']:.1f}",
    )
    if phones.pairs:
        phones.plot(folder.phone_unit_plot, metrics["codebook_size"])


def _check_units_made_by(folder: RunFolder, fingerprint: str) -> None:
    made_by = folder.read_units_meta().codebook_fingerprint
    if made_by != fingerprint:
        raise ConfigError(
            "codebook", fingerprint, f"the units in {folder.root} were made with {made_by}; re-run quantize"
        )


def _robustness(config: RobustnessConfig, data: DataConfig, source, folder: RunFolder, units_model,
                device) -> dict:  # fmt: skip
    """Unit edit distances under augmentation, over num_files files spread evenly through the run's manifest,
    encoded exactly as the quantize stage would (the run's extractor and unit model)."""
    from ..api import UnitEncoder

    listing = processed_utterances(data, folder)
    step = max(1, len(listing) // config.num_files)
    picked = listing[::step][: config.num_files]
    rate = source.feature_config["sample_rate"]
    waves = [w.samples for w in iter_waveforms(picked, rate, 0, "raise", [])]
    encoder = UnitEncoder(units_model, source.feature_config, device)
    return unit_robustness(lambda wave, sample_rate: encoder.encode(wave, sample_rate).cpu(), waves, rate, config.seed)


@dataclass
class _Abx:
    """ABX error rates on the representations evaluate.abx.inputs names, for the utterances its items cover."""

    config: AbxConfig | None = None
    items: list[AbxItem] = field(default_factory=list)
    codebook_size: int = 0
    frames: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # input name -> utt_id -> frames
    files: set[str] = field(default_factory=set)  # the utterances the items cover

    @classmethod
    def create(cls, config: AbxConfig, data: DataConfig, alignments: dict, codebook_size: int) -> _Abx:
        """An inactive one unless ABX is enabled and the data has alignments and speakers."""
        if not (config.enabled and data.speakers and alignments):
            return cls()
        speakers = require_match(read_speakers(data.speakers), alignments, data.speakers)
        items = items_from_labels(alignments, data.alignment_rate_hz, speakers)
        files = {item.file for item in items}
        return cls(config, items, codebook_size, {name: {} for name in config.inputs}, files)

    def add(self, utt_id: str, normalized: torch.Tensor, units: torch.Tensor, quantized: torch.Tensor) -> None:
        if utt_id not in self.files:
            return
        made = {"features": normalized, "codewords": quantized}
        for name, store in self.frames.items():
            store[utt_id] = (
                torch.nn.functional.one_hot(units[:, 0], self.codebook_size).float() if name == "units" else made[name]
            ).cpu()

    def result(self, frame_rate_hz: float) -> dict | None:
        if not self.items:
            return None
        c = self.config
        return {
            name: abx_error_rates(frames, frame_rate_hz, self.items, str(c.distance), c.max_size_group,
                                  c.max_x_across, c.seed).to_dict()
            for name, frames in self.frames.items()
        }  # fmt: skip


@dataclass
class _WordProbe:
    """The first stream's units of the utterances the evaluate.word_probe pattern matches."""

    pattern: re.Pattern | None
    units: dict[str, list[int]] = field(default_factory=dict)

    def add(self, utt_id: str, units: torch.Tensor) -> None:
        if self.pattern and self.pattern.search(utt_id):
            self.units[utt_id] = units.tolist()

    def result(self) -> dict | None:
        return word_probe(self.units, self.pattern) if self.units else None


@dataclass
class _PhoneCounts:
    """Frame-level (phone, unit) pairs for HuBERT's PNMI and purities (first stream for multi-codebook units),
    over all aligned utterances and, where they come from more than one top-level folder (the demo: espeak/
    and fsdd/), per folder too: phone sets and recording conditions differ, so each gets its own scores."""

    ratio: float  # label frames per unit frame
    tolerance_frames: int
    phones: dict[str, int] = field(default_factory=dict)
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)

    def add(self, utt_id: str, units: torch.Tensor, labels: list[str]) -> None:
        """Pair units with labels frame by frame at the finer of the two rates; trim the small length difference
        that framing conventions leave, and refuse a larger one (a sign of mismatched files). Labels finer than
        units (HuBERT's 50 Hz units, 100 Hz phones): every label frame with the unit that covers it, as fairseq's
        measure_teacher_quality.py repeats each unit (--upsample 2), so coarse units are scored on all the labels,
        not on every other one. Units finer than labels: every unit frame with the label that covers it."""
        expected = round(len(labels) / self.ratio)
        if abs(expected - units.numel()) > self.tolerance_frames:
            raise AlignmentError(
                utt_id, f"{len(labels)} labels cover {expected} unit frames, but there are {units.numel()}"
            )
        if self.ratio >= 1:
            unit_index = (torch.arange(len(labels), dtype=torch.float64) / self.ratio).long()
            keep = unit_index < units.numel()
            label_index, units = torch.arange(len(labels))[keep], units[unit_index[keep]]
        else:
            label_index = (torch.arange(units.numel(), dtype=torch.float64) * self.ratio).long()
            keep = label_index < len(labels)
            label_index, units = label_index[keep], units[keep]
        phone_ids = [self.phones.setdefault(labels[i], len(self.phones)) for i in label_index.tolist()]
        self.pairs.append((torch.tensor(phone_ids, dtype=torch.long), units))
        self.groups.append(utt_id.split("/")[0] if "/" in utt_id else "")

    def merge(self, phones: dict[str, int], pairs: list, groups: list[str]) -> None:
        """Another rank's pairs, its phone ids mapped to ours."""
        names = sorted(phones, key=phones.get)
        mapping = torch.tensor([self.phones.setdefault(name, len(self.phones)) for name in names], dtype=torch.long)
        self.pairs += [(mapping[phone_ids], units) for phone_ids, units in pairs]
        self.groups += groups

    def scores(self, codebook_size: int) -> dict:
        result = {**self._scores(self.pairs, codebook_size), "stream": 0}
        names = sorted(set(self.groups))
        if len(names) > 1:
            result["groups"] = {
                name: self._scores([p for p, g in zip(self.pairs, self.groups) if g == name], codebook_size)
                for name in names
            }
        return result

    def _counts(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], codebook_size: int) -> torch.Tensor:
        phone_ids = torch.cat([p for p, _ in pairs])
        unit_ids = torch.cat([u for _, u in pairs])
        counts = torch.zeros(len(self.phones), codebook_size, dtype=torch.long)
        counts.index_put_((phone_ids, unit_ids), torch.ones_like(unit_ids), accumulate=True)
        return counts

    def plot(self, path, codebook_size: int) -> None:
        names = sorted(self.phones, key=self.phones.get)
        plot_phone_unit_heatmap(self._counts(self.pairs, codebook_size), names, path, "phones and units (all data)")

    def _scores(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], codebook_size: int) -> dict:
        counts = self._counts(pairs, codebook_size)
        unit_ids = torch.cat([u for _, u in pairs])
        return {
            "num_utterances": len(pairs),
            "num_frames": int(unit_ids.numel()),
            "num_phones": int((counts.sum(dim=1) > 0).sum()),
            **phone_unit_scores(counts),
        }


class _Reconstruction:
    """Log-mel distances between the reference log-mel of the audio and the log-mel rebuilt from the units
    (and from the unquantized features, to isolate what quantization loses); MCD where the features are
    cepstra; and the first evaluate.resynthesize utterances written as Griffin-Lim WAVs."""

    def __init__(self, evaluate: EvaluateConfig, folder: RunFolder, units_model, inversion, waveforms):
        self.evaluate, self.folder, self.units_model, self.inversion = evaluate, folder, units_model, inversion
        self.waveforms = waveforms
        self.sums = {"quantized": {}, "unquantized": {}}
        self.mcd_sum, self.mcd_frames, self.written = 0.0, 0, 0

    @classmethod
    def create(cls, evaluate: EvaluateConfig, data: DataConfig, source, folder: RunFolder, units_model):
        if not evaluate.reconstruction:
            return None
        inversion = build_inversion(source.feature_config)
        if inversion is None:
            log.info("evaluate: no log-mel reconstruction is defined for %s features", source.feature_config["name"])
            return None
        # The audio of the run's utterances, in order (segments of files where the listing has them).
        listing = processed_utterances(data, folder, ids=[stored.utt_id for stored in source.utterances])
        if [utt.utt_id for utt in listing] != [stored.utt_id for stored in source.utterances]:
            raise ConfigError("data.path", data.path, f"does not list the utterances of the run in {folder.root}")
        waveforms = iter_waveforms(listing, source.feature_config["sample_rate"], data.num_workers, "raise", [])
        return cls(evaluate, folder, units_model, inversion, waveforms)

    def add(self, features: FeatureMatrix, quantized: torch.Tensor) -> None:
        waveform = next(self.waveforms)
        reference = reference_logmel(waveform.samples, waveform.sample_rate)
        raw_quantized = self.units_model.denormalize(quantized)
        estimate = self.inversion.logmel(raw_quantized)
        for key, rebuilt in (("quantized", estimate), ("unquantized", self.inversion.logmel(features.frames))):
            for name, value in logmel_distances(reference, rebuilt).items():
                self.sums[key][name] = self.sums[key].get(name, 0.0) + value
        mcd = self.inversion.mcd(features.frames, raw_quantized)
        if mcd is not None:
            self.mcd_sum += float(mcd.sum())
            self.mcd_frames += mcd.numel()
        if self.written < self.evaluate.resynthesize and reference.shape[0] > 0:
            stem = f"{self.written:03d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", features.utt_id)[:80]
            rate = waveform.sample_rate
            fileio.write_wav(self.folder.resynth_dir / f"{stem}.original.wav", waveform.samples, rate)
            rebuilt_wave = griffin_lim(estimate[: reference.shape[0]], rate)
            fileio.write_wav(self.folder.resynth_dir / f"{stem}.units.wav", rebuilt_wave, rate)
            self.written += 1

    def totals(self) -> tuple:
        return self.sums, self.mcd_sum, self.mcd_frames, self.written

    def merge(self, totals: tuple) -> None:
        sums, mcd_sum, mcd_frames, written = totals
        for key, values in sums.items():
            for name, value in values.items():
                self.sums[key][name] = self.sums[key].get(name, 0.0) + value
        self.mcd_sum += mcd_sum
        self.mcd_frames += mcd_frames
        self.written += written

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
