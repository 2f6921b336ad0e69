"""The command line, run for real in a subprocess, and every config option composed against the schema."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from speechvq.checks import check_config
from speechvq.config import RunConfig
from speechvq.features import build_extractor

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def run_cli(*overrides, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "speechvq.run", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_end_to_end(dataset, tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(
        f"data.path={dataset}",
        "data.alignments=null",
        f"hydra.run.dir={run_dir}",
        "codebook.codebook_size=6",
        "codebook.n_init=1",
        "data.num_workers=1",
    )
    assert done.returncode == 0, done.stderr
    assert f"outputs in {run_dir}" in done.stdout and "SQNR" in done.stdout
    for name in (
        "train.km",
        "train.tsv",
        "dict.km.txt",
        "units.jsonl",
        "codebook.safetensors",
        "metrics.json",
        "codebook_usage.png",
        "errors.tsv",
        ".hydra/config.yaml",
        "run.log",
    ):
        assert (run_dir / name).exists(), name
    assert json.loads((run_dir / "metrics.json").read_text())["num_utterances"] == 6


def test_cli_bad_input_exits_with_named_error(tmp_path):
    done = run_cli(f"data.path={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "DatasetNotFoundError" in done.stderr and "nowhere" in done.stderr


def test_cli_refuses_an_impossible_value_before_any_work(dataset, tmp_path):
    # Once, quantize.chunk_size=-5 exited 0 with uninitialised memory written as units.
    done = run_cli(f"data.path={dataset}", "quantize.chunk_size=-5", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "ConfigError" in done.stderr and "quantize.chunk_size=-5" in done.stderr
    assert not (tmp_path / "run" / "features").exists() and not (tmp_path / "run" / "train.km").exists()


def compose_config(overrides):
    import speechvq.run  # noqa: F401  registers the schema

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_object(cfg)


MANDATORY = {
    ("data", "folder"): ["data.path=x"],
    ("features", "ssl"): ["features.checkpoint=x.safetensors"],
    ("codebook", "encoder"): ["features=encoder"],  # the encoder's own quantizer works on its own features
    ("experiment", "hubert_demo"): ["train_encoder.objective.targets=runs/x"],
    ("train_encoder/objective", "masked_prediction"): ["train_encoder.objective.targets=runs/x"],
    ("train_encoder/objective", "contrastive"): ["train_encoder/quantizer=gumbel"],  # refused otherwise (tested)
}
NEEDS_WEIGHTS = {"encoder", "ssl"}  # built in their own tests, from real weight files


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "features",
        "codebook",
        "train_encoder",
        "quantize",
        "evaluate",
        "train_encoder/quantizer",
        "train_encoder/objective",
        "experiment",
    ],
)
def test_every_config_option_composes_against_the_schema(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        config = compose_config([f"{group}={option}"] + MANDATORY.get((group, option), []))
        assert isinstance(config, RunConfig)
        check_config(config)  # every shipped option passes the start-up checks
        if config.features.name not in NEEDS_WEIGHTS:
            build_extractor(config.features)


def test_typo_in_a_key_fails_at_start_up():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config(["codebook.codebok_size=10"])
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config(["features.num_cepz=3"])
