"""Command line: `python -m speechvq.run [overrides]`. The only module that knows about Hydra:
it composes the config, checks it against the schema and hands plain dataclasses to the pipeline."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import RunConfig
from .errors import ConfigError, SpeechVQError
from .job import run
from .report import format_report

log = logging.getLogger("speechvq")

ConfigStore.instance().store(name="schema", node=RunConfig)


# An absolute path: Hydra resolves a relative one differently when this module is imported than when it runs.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def _main(cfg: DictConfig) -> None:
    config: RunConfig = OmegaConf.to_object(cfg)
    run_dir = HydraConfig.get().runtime.output_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        # Launched by torchrun: the train stage runs distributed k-means (gloo on CPU, NCCL on GPUs).
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo")
    try:
        result = run(config, run_dir)
    except SpeechVQError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        sys.exit(2)
    print(f"\nspeechvq finished; outputs in {result.run_dir}\n{format_report(result)}")


def main() -> None:
    """A value Hydra refuses while it composes the config (a misspelled choice, key or config-group option, a
    word for a number) is reported like every other bad value: one ConfigError line naming the key, exit 2."""
    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises composition errors to us instead of exiting
    try:
        _main()
    except ConfigCompositionException as exc:
        error = _as_config_error(exc)
        if error is None:
            if full_error:
                raise
            print(exc, file=sys.stderr)
            sys.exit(1)
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(2)


def _as_config_error(exc: ConfigCompositionException) -> ConfigError | None:
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return ConfigError(group, option, f"no such option; choose one of {exc.options or []}")
    cause = exc.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        reason = str(cause.msg).splitlines()[0] if cause.msg else type(cause).__name__
        return ConfigError(cause.full_key, cause.value, reason)
    return None


if __name__ == "__main__":
    main()
