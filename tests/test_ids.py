"""Utterance ids as users have them: alignments and speakers keyed by id, or by file stem when the dataset's files sit
in folders (the LibriSpeech / MFA convention); a named error quoting both sides when nothing matches."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from conftest import REPO, write_dataset

from speechvq import pipeline
from speechvq.config import CodebookConfig, DataConfig, EvaluateConfig, RobustnessConfig, RunConfig
from speechvq.errors import AlignmentError
from speechvq.ids import match_ids, require_match


def test_ids_match_first_and_stems_are_not_tried_then():
    keyed = {"a/x": 1, "y": 2}  # "y" would match "b/y" by stem, but an id matched, so stems are not tried
    matched = match_ids(keyed, ["a/x", "b/y"], "labels")
    assert matched.by_id == {"a/x": 1} and matched.matched_on == "id"


def test_stems_match_where_no_id_does(caplog):
    with caplog.at_level(logging.INFO, logger="speechvq.ids"):
        matched = match_ids({"1688-0000": "p", "1688-0001": "q"}, ["wav/1688-0000", "wav/1688-0001"], "labels")
    assert matched.by_id == {"wav/1688-0000": "p", "wav/1688-0001": "q"} and matched.matched_on == "file stem"
    lines = [r.getMessage() for r in caplog.records if "file stem" in r.getMessage()]
    assert len(lines) == 1 and "2 of 2" in lines[0] and "'1688-0000' -> 'wav/1688-0000'" in lines[0]


def test_a_stem_shared_by_two_files_is_not_guessed():
    ids = ["spk1/utt0", "spk2/utt0", "spk1/utt1"]
    assert match_ids({"utt0": 1, "utt1": 2}, ids, "labels").by_id == {"spk1/utt1": 2}
    assert match_ids({"a/utt1": 1, "b/utt1": 2}, ids, "labels").by_id == {}  # two keys with one stem: neither


def test_nothing_matching_quotes_ids_of_both_sides(tmp_path):
    with pytest.raises(AlignmentError) as error:
        require_match({"zz9": 1, "zz8": 2}, ["a/utt0", "b/utt1"], tmp_path / "labels.tsv")
    message = str(error.value)
    assert "labels.tsv" in message and "'zz8', 'zz9'" in message and "'a/utt0', 'b/utt1'" in message


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A quantized run whose dataset's files sit in sub-folders (ids 'a/utt1', 'b/utt0', ...), and its records."""
    root = tmp_path_factory.mktemp("ids")
    write_dataset(root / "corpus")
    config = RunConfig(
        data=DataConfig(path=str(root / "corpus"), num_workers=0),
        codebook=CodebookConfig(codebook_size=8, n_init=1, max_iter=10),
        evaluate=EvaluateConfig(plot=False, reconstruction=False, robustness=RobustnessConfig(num_files=0)),
        stages=["features", "train", "quantize"],
        device="cpu",
    )
    pipeline.run(config, root / "run")
    records = [json.loads(line) for line in (root / "run" / "units.jsonl").read_text().splitlines()]
    assert all("/" in r["id"] for r in records)
    return root, config, records


def write_labels(path, records, key):
    path.write_text("".join(f"{key(r['id'])}\t{' '.join(f'p{(t // 7) % 4}' for t in range(r['num_frames']))}\n"
                            for r in records))  # fmt: skip
    return str(path)


def write_speakers(path, records, key):
    path.write_text("".join(f"{key(r['id'])}\t{r['id'].split('/')[0]}\n" for r in records))
    return str(path)


def evaluated(config, run_dir, alignments, speakers=None):
    data = DataConfig(**{**config.data.__dict__, "alignments": alignments, "speakers": speakers})
    return pipeline.run(RunConfig(**{**config.__dict__, "data": data, "stages": ["evaluate"]}), run_dir).metrics


def test_evaluate_matches_stem_keyed_alignments_and_speakers_as_id_keyed_ones(quantized):
    root, config, records = quantized
    by_id = evaluated(config, root / "run", write_labels(root / "id.tsv", records, str),
                      write_speakers(root / "id_spk.tsv", records, str))  # fmt: skip
    stem = lambda utt_id: utt_id.rsplit("/", 1)[-1]  # noqa: E731
    by_stem = evaluated(config, root / "run", write_labels(root / "stem.tsv", records, stem),
                        write_speakers(root / "stem_spk.tsv", records, stem))  # fmt: skip
    assert by_id["alignment"]["pnmi"] > 0 and by_id["alignment"] == by_stem["alignment"]
    assert by_id["abx"] == by_stem["abx"] and by_id["abx"]["features"]["num_items"] > 0


def test_evaluate_names_alignments_and_speakers_that_match_nothing(quantized):
    root, config, records = quantized
    strangers = write_labels(root / "strangers.tsv", records, lambda utt_id: f"other-{utt_id.replace('/', '_')}")
    with pytest.raises(AlignmentError, match=r"strangers\.tsv.*'other-a_utt1'.*the dataset has 'a/utt1'"):
        evaluated(config, root / "run", strangers)
    labels = write_labels(root / "labels.tsv", records, str)
    speakers = write_speakers(root / "strangers_spk.tsv", records, lambda utt_id: "x-" + utt_id.replace("/", "_"))
    with pytest.raises(AlignmentError, match=r"strangers_spk\.tsv.*'x-a_utt1'"):
        evaluated(config, root / "run", labels, speakers)


def test_compare_abx_refuses_alignments_that_name_none_of_the_runs_utterances(quantized):
    root, _, records = quantized
    strangers = write_labels(root / "strangers.tsv", records, lambda utt_id: f"other-{utt_id.replace('/', '_')}")
    speakers = write_speakers(root / "spk.tsv", records, str)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compare_abx.py"), "--run", str(root / "run"),
         "--alignments", strangers, "--speakers", speakers],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "AlignmentError" in done.stderr and "strangers.tsv" in done.stderr and "'a/utt1'" in done.stderr
    assert "Traceback" not in done.stderr
