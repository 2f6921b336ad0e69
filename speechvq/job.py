"""A whole job as the command line runs it: HuBERT's iterations when iteration.count > 0 (iterate.py, which runs
pipelines of its own), otherwise one pipeline run. The one place that chooses between the two, so neither
orchestrator knows the other exists above it."""

from __future__ import annotations

from pathlib import Path

from . import pipeline
from .config import RunConfig
from .iterate import run_iterations
from .pipeline import RunSummary


def run(config: RunConfig, run_dir: str | Path) -> RunSummary:
    """The job `config` describes, in run_dir; the summary of its (last) pipeline run."""
    if config.iteration.count:
        return run_iterations(config, run_dir)
    return pipeline.run(config, run_dir)
