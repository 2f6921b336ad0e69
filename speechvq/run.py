"""Command line: `python -m speechvq.run [overrides]`. The only module that knows about Hydra:
it composes the config, checks it against the schema and hands plain dataclasses to the pipeline."""

from __future__ import annotations

import logging
import os
import sys

import hydra
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import RunConfig
from .errors import SpeechVQError
from .pipeline import format_report, run

log = logging.getLogger("speechvq")

ConfigStore.instance().store(name="schema", node=RunConfig)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
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


if __name__ == "__main__":
    main()
