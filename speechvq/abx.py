"""ABX discriminability of phones, as ZeroSpeech and libri-light define it.

Items are triphones: (file, onset, offset, phone, previous phone, next phone, speaker). For phones a != b in the same
context: A and X are tokens of a, B a token of b, and the triple counts as right when DTW(X, A) < DTW(X, B) (a tie
counts one half). Within speaker, A, B and X share the speaker (X != A); across speakers, A and B share one speaker
and X comes from another. Scores are averaged over contexts (and X speakers), then speakers, then phone pairs; the
result is the error rate, 1 - score. DTW is over a frame distance (angular by default: acos of the cosine / pi),
normalized by the length of the best path. Groups larger than max_size_group are subsampled, and across speakers
at most max_x_across X speakers are drawn, with a seeded generator.

Item frames follow libri-light's convention: frames ceil(rate * onset - 0.5) up to floor(rate * offset - 0.5).
Unlike libri-light's implementation, which scales every frame to unit length before any distance, the Euclidean and
KL distances here see the frames as they are (the angular distance is the same either way)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AlignmentError

SILENCES = frozenset({"sil", "sp", "spn", "<sil>", "SIL", ""})
DISTANCES = ("angular", "euclidean", "kl", "kl_symmetric")
ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker"


@dataclass(frozen=True)
class AbxItem:
    file: str
    onset: float  # seconds
    offset: float
    phone: str
    prev: str
    next: str
    speaker: str


def read_items(path: str | Path) -> list[AbxItem]:
    """A ZeroSpeech .item file (space-separated, a header line)."""
    items = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if len(fields) != 7:
            raise AlignmentError(f"{path}:{number}", f"expected 7 fields ({ITEM_HEADER}), got {len(fields)}")
        file, onset, offset, phone, prev, nxt, speaker = fields
        items.append(AbxItem(file, float(onset), float(offset), phone, prev, nxt, speaker))
    return items


def write_items(path: str | Path, items: list[AbxItem]) -> None:
    from .fileio import write_text

    rows = [f"{i.file} {i.onset:.4f} {i.offset:.4f} {i.phone} {i.prev} {i.next} {i.speaker}\n" for i in items]
    write_text(Path(path), ITEM_HEADER + "\n" + "".join(rows))


def read_speakers(path: str | Path) -> dict[str, str]:
    """utt_id<TAB>speaker per line (a header line `utt_id speaker` is allowed)."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle, delimiter="\t") if row]
    if rows and rows[0][:2] == ["utt_id", "speaker"]:
        rows = rows[1:]
    bad = next((n for n, row in enumerate(rows, 1) if len(row) != 2), None)
    if bad is not None:
        raise AlignmentError(f"{path}:{bad}", "expected utt_id<TAB>speaker")
    return dict(rows)


def items_from_labels(labels: dict[str, list[str]], rate_hz: float, speakers: dict[str, str]) -> list[AbxItem]:
    """Frame-level phone labels -> triphone items: every phone segment (a run of one label) that is not silence
    and has a segment before and after it (which may be silence). Files without a speaker are left out."""
    items = []
    for utt_id, frames in labels.items():
        if utt_id not in speakers:
            continue
        runs = _runs(frames)
        for (prev, _, _), (phone, start, end), (nxt, _, _) in zip(runs, runs[1:], runs[2:]):
            if phone not in SILENCES:
                items.append(AbxItem(utt_id, start / rate_hz, end / rate_hz, phone, prev, nxt, speakers[utt_id]))
    return items


def _runs(frames: list[str]) -> list[tuple[str, int, int]]:
    runs: list[tuple[str, int, int]] = []
    for index, label in enumerate(frames):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], index + 1)
        else:
            runs.append((label, index, index + 1))
    return runs


def item_span(onset: float, offset: float, rate_hz: float, num_frames: int) -> tuple[int, int]:
    start = max(0, math.ceil(rate_hz * onset - 0.5))
    return start, min(num_frames, math.floor(rate_hz * offset - 0.5))


# --- distances ----------------------------------------------------------------------------------------------


def frame_distances(x: torch.Tensor, y: torch.Tensor, distance: str = "angular") -> torch.Tensor:
    """(B, Sx, D) and (B, Sy, D) -> (B, Sx, Sy). angular: acos(cos) / pi, a zero frame at distance 1 from any
    other frame (0 from another zero frame); euclidean; kl: sum p log(p / q) of (posteriorgram) frames, eps 1e-6;
    kl_symmetric: the mean of both directions."""
    if distance == "angular":
        nx, ny = x.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)
        cosine = (x / nx.clamp_min(1e-30)) @ (y / ny.clamp_min(1e-30)).transpose(1, 2)
        zero_x, zero_y = nx == 0, (ny == 0).transpose(1, 2)
        cosine = torch.where(zero_x | zero_y, torch.where(zero_x & zero_y, 1.0, -1.0), cosine)
        return cosine.clamp(-1, 1).acos() / math.pi
    if distance == "euclidean":
        return torch.cdist(x, y)
    if distance in ("kl", "kl_symmetric"):
        p, q = x.unsqueeze(2), y.unsqueeze(1)
        forward = (p * ((p + 1e-6) / (q + 1e-6)).log()).sum(-1)
        if distance == "kl":
            return forward
        return 0.5 * forward + 0.5 * (q * ((q + 1e-6) / (p + 1e-6)).log()).sum(-1)
    raise ValueError(f"unknown ABX distance {distance!r}; choose one of {DISTANCES}")


def dtw(costs: torch.Tensor, len_x: torch.Tensor, len_y: torch.Tensor) -> torch.Tensor:
    """(B, Sx, Sy) frame distances (pair b uses its first len_x[b] x len_y[b] cells) -> (B,) DTW cost divided by
    the length of the best path. Steps: diagonal, along x, along y; ties prefer the diagonal, then the step along y
    (the backtracking order of libri-light's dtw). Filled one anti-diagonal at a time, all pairs together."""
    batch, sx, sy = costs.shape
    total = torch.full_like(costs, math.inf)
    steps = torch.zeros_like(costs)
    total[:, 0, 0], steps[:, 0, 0] = costs[:, 0, 0], 1
    inf = torch.tensor(math.inf, dtype=costs.dtype)
    for d in range(1, sx + sy - 1):
        i = torch.arange(max(0, d - sy + 1), min(d, sx - 1) + 1)
        j = d - i
        ip, jp = (i - 1).clamp(min=0), (j - 1).clamp(min=0)
        diag = torch.where((i > 0) & (j > 0), total[:, ip, jp], inf)
        left = torch.where(j > 0, total[:, i, jp], inf)
        up = torch.where(i > 0, total[:, ip, j], inf)
        take_diag = (diag <= left) & (diag <= up)
        take_left = ~take_diag & (left <= up)
        best = torch.where(take_diag, diag, torch.where(take_left, left, up))
        length = torch.where(take_diag, steps[:, ip, jp], torch.where(take_left, steps[:, i, jp], steps[:, ip, j]))
        total[:, i, j], steps[:, i, j] = costs[:, i, j] + best, length + 1
    index = torch.arange(batch)
    return total[index, len_x - 1, len_y - 1] / steps[index, len_x - 1, len_y - 1]


# --- scores -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AbxScores:
    within: float | None  # error rate, within speaker (None: no triple could be formed)
    across: float | None
    num_items: int  # items with at least one frame
    num_within_groups: int  # (A group, B group) comparisons made, each over all its (a, b, x) triples
    num_across_groups: int

    def to_dict(self) -> dict:
        return {
            "within_speaker_error": self.within,
            "across_speaker_error": self.across,
            "num_items": self.num_items,
            "num_within_groups": self.num_within_groups,
            "num_across_groups": self.num_across_groups,
        }


class _Table:
    """The items' frames, padded, with their group keys; DTW distances computed once per (X item, other item)."""

    def __init__(self, frames: list[torch.Tensor], distance: str):
        self.lengths = torch.tensor([f.shape[0] for f in frames])
        self.padded = torch.nn.utils.rnn.pad_sequence(frames, batch_first=True)
        self.distance = distance
        self.cache: dict[tuple[int, int], float] = {}

    def compute(self, pairs: set[tuple[int, int]], budget: int = 2**24) -> None:
        """DTW of every (x, y) pair not computed yet, in batches of similar lengths."""
        lengths = self.lengths.tolist()
        todo = sorted((p for p in pairs if p not in self.cache), key=lambda p: (lengths[p[0]], lengths[p[1]], p))
        dim = self.padded.shape[2]
        start = 0
        while start < len(todo):
            # A chunk holds pairs of one x length, so the padding is only along y.
            sx = lengths[todo[start][0]]
            end = start
            while end < len(todo) and lengths[todo[end][0]] == sx:
                end += 1
            sy = max(lengths[todo[end - 1][1]], 1)
            size = max(1, budget // ((sx + sy) * dim + sx * sy))
            chunk = todo[start : min(end, start + size)]
            x_index = torch.tensor([p[0] for p in chunk])
            y_index = torch.tensor([p[1] for p in chunk])
            len_x, len_y = self.lengths[x_index], self.lengths[y_index]
            x = self.padded[x_index, : int(len_x.max())]
            y = self.padded[y_index, : int(len_y.max())]
            values = dtw(frame_distances(x, y, self.distance), len_x, len_y)
            self.cache.update(zip(chunk, values.tolist()))
            start += len(chunk)

    def score(self, group_x: list[int], group_a: list[int], group_b: list[int], same: bool) -> float:
        """Share of (x, a, b) with d(x, a) < d(x, b), ties one half; same: X is A's group, x != a."""
        right, count = 0.0, 0
        for x in group_x:
            to_b = [self.cache[(x, b)] for b in group_b]
            for a in group_a:
                if same and a == x:
                    continue
                to_a = self.cache[(x, a)]
                right += sum(1.0 if to_a < d else 0.5 if to_a == d else 0.0 for d in to_b)
                count += len(to_b)
        return right / count


def abx_error_rates(
    features: dict[str, torch.Tensor],
    rate_hz: float,
    items: list[AbxItem],
    distance: str = "angular",
    max_size_group: int = 10,
    max_x_across: int = 5,
    seed: int = 3459,
) -> AbxScores:
    """features: file -> (num_frames, dim) at rate_hz (continuous frames, posteriorgrams, or one-hot / codeword
    vectors of units). Items whose file is missing or that cover no frame are left out."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown ABX distance {distance!r}; choose one of {DISTANCES}")
    frames, keys = [], []
    for item in items:
        if item.file not in features:
            continue
        start, end = item_span(item.onset, item.offset, rate_hz, features[item.file].shape[0])
        if end > start:
            frames.append(features[item.file][start:end].float().cpu())
            keys.append((f"{item.prev}+{item.next}", item.speaker, item.phone))
    if not frames:
        return AbxScores(None, None, 0, 0, 0)
    groups = _groups(keys, max_size_group, torch.Generator().manual_seed(seed))
    table = _Table(frames, distance)
    within = _within(groups, table)
    across = _across(groups, table, max_x_across, torch.Generator().manual_seed(seed + 1))
    return AbxScores(_average(within), _average(across), len(frames), len(within), len(across))


def _groups(keys, max_size: int, generator) -> dict[str, dict[str, dict[str, list[int]]]]:
    """context -> speaker -> phone -> item indices (at most max_size, drawn with the generator)."""
    groups: dict = defaultdict(lambda: defaultdict(dict))
    members = defaultdict(list)
    for index, key in enumerate(keys):
        members[key].append(index)
    for (context, speaker, phone), indices in sorted(members.items()):
        if len(indices) > max_size:
            pick = torch.randperm(len(indices), generator=generator)[:max_size].sort().values
            indices = [indices[i] for i in pick.tolist()]
        groups[context][speaker][phone] = indices
    return groups


def _within(groups, table: _Table) -> list[tuple[tuple, float]]:
    """((speaker, a, b), error) per context."""
    plan = []
    for speakers in groups.values():
        for speaker, phones in speakers.items():
            for a, group_a in phones.items():
                if len(group_a) < 2:
                    continue
                for b, group_b in phones.items():
                    if b != a:
                        plan.append(((speaker, a, b), group_a, group_a, group_b))
    table.compute({(x, y) for _, gx, ga, gb in plan for x in gx for y in ga + gb if x != y})
    return [(key, 1.0 - table.score(gx, ga, gb, same=True)) for key, gx, ga, gb in plan]


def _across(groups, table: _Table, max_x: int, generator) -> list[tuple[tuple, float]]:
    """((speaker of A and B, a, b), error) per context and X speaker."""
    plan = []
    for speakers in groups.values():
        for speaker, phones in speakers.items():
            if len(phones) < 2:
                continue
            for a, group_a in phones.items():
                others = [s for s in speakers if s != speaker and a in speakers[s]]
                if len(others) > max_x:
                    others = [others[i] for i in torch.randperm(len(others), generator=generator)[:max_x].tolist()]
                for other in others:
                    for b, group_b in phones.items():
                        if b != a:
                            plan.append(((speaker, a, b), speakers[other][a], group_a, group_b))
    table.compute({(x, y) for _, gx, ga, gb in plan for x in gx for y in ga + gb})
    return [(key, 1.0 - table.score(gx, ga, gb, same=False)) for key, gx, ga, gb in plan]


def _average(scores: list[tuple[tuple, float]]) -> float | None:
    """Mean over contexts (and X speakers) per (speaker, a, b), then over speakers per (a, b), then over pairs."""
    if not scores:
        return None
    per_speaker: dict[tuple, list[float]] = defaultdict(list)
    for key, value in scores:
        per_speaker[key].append(value)
    per_pair: dict[tuple, list[float]] = defaultdict(list)
    for (_, a, b), values in per_speaker.items():
        per_pair[(a, b)].append(sum(values) / len(values))
    pair_means = [sum(values) / len(values) for values in per_pair.values()]
    return sum(pair_means) / len(pair_means)
