"""Invalid overrides on the real command line: each exits with status 2, prints one ConfigError line naming the
key, and writes no features. The CLI's own main() runs in this process (a subprocess per case would spend
minutes importing torch); tests/test_cli.py runs one such case in a real subprocess."""

import io
import sys
from contextlib import redirect_stderr

import pytest
import torch

from speechvq.run import main

CASES = [  # (override, key the error must name)
    ("quantize.chunk_size=-5", "quantize.chunk_size"),
    ("quantize.chunk_size=0", "quantize.chunk_size"),
    ("codebook.chunk_size=0", "codebook.chunk_size"),
    ("codebook.codebook_size=0", "codebook.codebook_size"),
    ("codebook.codebook_size=-5", "codebook.codebook_size"),
    ("codebook.n_init=0", "codebook.n_init"),
    ("codebook.max_iter=0", "codebook.max_iter"),
    ("codebook.max_train_frames=0", "codebook.max_train_frames"),
    ("codebook.precision=Fast", "codebook.precision"),
    ("codebook.precision=half", "codebook.precision"),
    ("quantize.precision=half", "quantize.precision"),
    ("data.on_error=ignore", "data.on_error"),
    ("features.normalize=cmvn", "features.normalize"),
    ("stages=[features,trian]", "stages[1]"),
    ("features.name=mfc", "features.name"),
    ("features=mfc", "features"),
    ("codebook.name=kmean", "codebook.name"),
    ("train_encoder.quantizer.name=vq", "train_encoder.quantizer.name"),
    ("features.ssl_model=hubert_tiny", "features.ssl_model"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.num_shards=0", "data.num_shards"),
    ("data.shard_index=8", "data.shard_index"),  # not below data.num_shards=1
    ("data.batch_seconds=0", "data.batch_seconds"),
    ("data.batch_seconds=abc", "data.batch_seconds"),
    ("data.part_mb=-1", "data.part_mb"),
    ("features.sample_rate=0", "features.sample_rate"),
    ("features.frame_shift_ms=0", "features.frame_shift_ms"),
    ("features.num_ceps=30", "features.num_ceps"),  # more cepstra than the 23 mel bins
    ("features.layer=-1", "features.layer"),
    ("features.layer=[6,9]", "features.layer"),  # a list of layers is for features=ssl only
    ("features.layer=abc", "features.layer"),
    ("features.layer_reduction=sum", "features.layer_reduction"),
    ("features.dtype=half", "features.dtype"),
    ("train_encoder.steps=0", "train_encoder.steps"),
    ("train_encoder.batch_size=0", "train_encoder.batch_size"),
    ("train_encoder.micro_batches=0", "train_encoder.micro_batches"),
    ("train_encoder.micro_batches=3", "train_encoder.batch_size"),  # 16 utterances cannot be dealt into 3 pieces
    ("train_encoder.dtype=float16", "train_encoder.dtype"),
    ("train_encoder.learning_rate=0", "train_encoder.learning_rate"),
    ("train_encoder.validation_fraction=1.0", "train_encoder.validation_fraction"),
    ("train_encoder.narrowband_share=1.5", "train_encoder.narrowband_share"),
    ("train_encoder.narrowband_share=-0.1", "train_encoder.narrowband_share"),
    ("train_encoder.quantizer.ema_decay=1.5", "train_encoder.quantizer.ema_decay"),
    ("evaluate.alignment_tolerance_frames=-1", "evaluate.alignment_tolerance_frames"),
    ("evaluate.resynthesize=-1", "evaluate.resynthesize"),
    ("codebook=encoder", "codebook.name"),  # the encoder's own quantizer without the encoder's features
    ("features=encoder codebook=encoder features.normalize=utterance", "features.normalize"),  # not its frames
    ("stages=[merge]", "merge.inputs"),  # merge without the folder of shard runs
    ("codebook.codebok_size=10", "codebook.codebok_size"),  # a key that does not exist
    ("experiment=hubert_demo", "train_encoder.objective.targets"),  # masked prediction without its targets
    ("data=folder", "data.path"),  # a required value left unset (once, it silently meant the demo data)
    ("features=ssl", "features.checkpoint"),
    ("train_encoder.objective.name=hubert", "train_encoder.objective.name"),
    ("train_encoder.objective.mask_prob=1.0", "train_encoder.objective.mask_prob"),
    ("train_encoder/objective=contrastive", "train_encoder.quantizer.name"),  # contrastive needs gumbel
    ("train_encoder.objective.front_end=mel", "train_encoder.objective.front_end"),
    ("train_encoder.lr_schedule=linear", "train_encoder.lr_schedule"),
    ("train_encoder.warmup_steps=-1", "train_encoder.warmup_steps"),
    ("iteration.count=-1", "iteration.count"),
    ("iteration.count=2", "features.name"),  # HuBERT's iterations on MFCC features: not what they are
    ("features.store_dtype=half", "features.store_dtype"),
    ("device=tpu", "device"),  # not a backend speechvq runs on (torch.device raised a bare RuntimeError)
    ("device=mps", "device"),
    ("device=gpu", "device"),
]
if not torch.cuda.is_available():
    CASES += [("quantize.precision=fast", "quantize.precision"), ("device=cuda", "device")]


@pytest.mark.parametrize("override,key", CASES, ids=[c[0] for c in CASES])
def test_invalid_override_exits_2_naming_the_key(override, key, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    workers = "data.num_workers=0" if not override.startswith("data.num_workers") else "seed=0"
    monkeypatch.setattr(sys, "argv", ["speechvq.run", *override.split(), f"hydra.run.dir={run_dir}", workers])
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
        main()
    lines = [line for line in stderr.getvalue().splitlines() if "ConfigError: bad config" in line]
    assert exit_info.value.code == 2, stderr.getvalue()[-2000:]
    assert len(lines) == 1 and f"bad config {key}=" in lines[0], stderr.getvalue()[-2000:]
    assert "Traceback" not in stderr.getvalue()
    assert not (run_dir / "features").exists()
