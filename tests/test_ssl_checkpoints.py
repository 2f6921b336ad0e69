"""Bring-your-own checkpoints: Hugging Face folders and fairseq files, parity with the libraries that made them,
and loading that never runs pickled code. Tiny randomly initialised models, made and saved inside the tests."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re

import pytest
import torch
import torchaudio
from conftest import speechlike
from omegaconf import OmegaConf
from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

from speechvq.config import FeatureConfig
from speechvq.errors import CheckpointError, CheckpointMismatchError, UnsafeCheckpointError
from speechvq.features import build_extractor
from speechvq.safe_pickle import load_pickled

transformers = pytest.importorskip("transformers", reason="the [dev] extra installs transformers for parity tests")

TINY = {
    "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 3], "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
}  # fmt: skip
LENGTHS = (1234, 4000, 8003)  # samples: three lengths, so padding shows in the batch
HF_MODELS = {
    "hubert": ("HubertConfig", "HubertModel", {}),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", {}),
    "wavlm": ("WavLMConfig", "WavLMModel", {"num_buckets": 16, "max_bucket_distance": 50}),
    # Pre-norm ("stable layer norm", as the large models): hidden_states[-1] is without the final layer norm.
    "wav2vec2_stable": (
        "Wav2Vec2Config", "Wav2Vec2Model", {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}
    ),
}  # fmt: skip


def _waves():
    return [torch.from_numpy(speechlike(n / 16000, 16000, seed))[:n] for seed, n in enumerate(LENGTHS)]


def _hf_model(kind: str, folder):
    config_class, model_class, extra = HF_MODELS[kind]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**TINY, **extra)).eval()
    with torch.no_grad():  # random layer norms too, so a dropped or misplaced norm shows
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.add_(0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind", list(HF_MODELS))
def test_huggingface_layers_equal_transformers_hidden_states(kind, tmp_path):
    reference = _hf_model(kind, tmp_path / kind)
    waves = _waves()
    with torch.no_grad():
        expected = [reference(w.view(1, -1), output_hidden_states=True).hidden_states for w in waves]
    for layer in range(TINY["num_hidden_layers"] + 1):
        extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / kind), layer=layer))
        batched = extractor.extract_batch(waves)
        for wave, hidden, together in zip(waves, expected, batched):
            torch.testing.assert_close(extractor(wave), hidden[layer][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(together, hidden[layer][0], atol=1e-4, rtol=1e-4)
    assert extractor.dim == 32 and extractor.frame_rate_hz == 16000 / 20


def test_several_layers_concat_and_mean(tmp_path):
    reference = _hf_model("hubert", tmp_path / "m")
    wave = _waves()[1]
    with torch.no_grad():
        hidden = reference(wave.view(1, -1), output_hidden_states=True).hidden_states
    config = FeatureConfig(name="ssl", checkpoint=str(tmp_path / "m"), layer=[1, 3])
    concat = build_extractor(config)
    mean = build_extractor(dataclasses.replace(config, layer_reduction="mean"))
    assert concat.dim == 64 and mean.dim == 32
    torch.testing.assert_close(concat(wave), torch.cat([hidden[1][0], hidden[3][0]], dim=1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean(wave), (hidden[1][0] + hidden[3][0]) / 2, atol=1e-4, rtol=1e-4)


def test_pickled_huggingface_weights_and_waveform_normalization(tmp_path):
    """pytorch_model.bin (a pickle) instead of safetensors, and preprocessor_config.json's do_normalize:
    the model then sees zero-mean unit-variance audio, as transformers' feature extractor gives it."""
    reference = _hf_model("wav2vec2", tmp_path / "m")
    os.remove(tmp_path / "m" / "model.safetensors")
    torch.save(reference.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    wave = 3.0 * _waves()[2] + 0.1
    normalized = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        expected = reference(normalized.view(1, -1), output_hidden_states=True).hidden_states[2][0]
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "m"), layer=2))
    torch.testing.assert_close(extractor(wave), expected, atol=1e-4, rtol=1e-4)


# --- fairseq ------------------------------------------------------------------------------------------------

TO_FAIRSEQ = [  # torchaudio's names -> fairseq's, written out here independently of the library's mapping
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"feature_extractor\.conv_layers\.0\.layer_norm\.", "feature_extractor.conv_layers.0.2."),
    (r"encoder\.feature_projection\.layer_norm\.", "layer_norm."),
    (r"encoder\.feature_projection\.projection\.", "post_extract_proj."),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.bias", "encoder.pos_conv.0.bias"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0", "encoder.pos_conv.0.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1", "encoder.pos_conv.0.weight_v"),
    (r"encoder\.transformer\.layer_norm\.", "encoder.layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]
FAIRSEQ_MODEL = {
    "_name": "hubert", "extractor_mode": "default", "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 2",
    "encoder_embed_dim": 32, "encoder_layers": 3, "encoder_attention_heads": 2, "encoder_ffn_embed_dim": 64,
    "conv_pos": 16, "conv_pos_groups": 2, "layer_norm_first": False, "activation_fn": "gelu",
}  # fmt: skip


def _torchaudio_tiny() -> torch.nn.Module:
    """The architecture FAIRSEQ_MODEL describes, in torchaudio."""
    return torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(16, 10, 5), (16, 3, 2), (16, 3, 2)],
        extractor_conv_bias=False, encoder_embed_dim=32, encoder_projection_dropout=0.0, encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=2, encoder_num_layers=3, encoder_num_heads=2, encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None,
    ).eval()  # fmt: skip


def _to_fairseq(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, replacement in TO_FAIRSEQ:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _fairseq_checkpoint(path, fine_tuned: bool = False):
    """A checkpoint in fairseq's layout: its key names, pretraining heads, cfg as nested omegaconf containers."""
    torch.manual_seed(1)
    original = _torchaudio_tiny()
    state = _to_fairseq(original.state_dict())
    state.update({"label_embs_concat": torch.randn(10, 8), "final_proj.weight": torch.randn(8, 32)})
    state["mask_emb"] = torch.randn(32)
    model_cfg = dict(FAIRSEQ_MODEL)
    if fine_tuned:
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()}
        state["w2v_encoder.proj.weight"] = torch.randn(29, 32)
        model_cfg = {"_name": "hubert_ctc", "w2v_args": {"model": model_cfg, "task": {"normalize": False}}}
    cfg = OmegaConf.create({"model": model_cfg, "task": {"_name": "hubert_pretraining", "normalize": False}})
    torch.save({"cfg": cfg, "model": state, "optimizer_history": [{"num_updates": 5}]}, path)
    return original, state


@pytest.mark.parametrize("fine_tuned", [False, True], ids=["pretraining", "ctc_fine_tuned"])
def test_fairseq_checkpoint_equals_torchaudio_fairseq_mapping(tmp_path, fine_tuned):
    original, state = _fairseq_checkpoint(tmp_path / "hubert.pt", fine_tuned)
    # torchaudio's own fairseq key mapping of the same weights (its import_fairseq_model needs fairseq itself).
    reference = _torchaudio_tiny()
    mapped = _convert_state_dict({k.removeprefix("w2v_encoder."): v for k, v in state.items()})
    reference.load_state_dict({k: v for k, v in mapped.items() if k not in ("label_embs_concat", "aux.weight")})
    waves = _waves()
    for layer in (1, 3):
        extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "hubert.pt"), layer=layer))
        assert extractor.family == "hubert"
        for wave, batched in zip(waves, extractor.extract_batch(waves)):
            expected = reference.extract_features(wave.view(1, -1), num_layers=layer)[0][-1][0]
            torch.testing.assert_close(batched, expected, atol=1e-4, rtol=1e-4)
            from_original = original.extract_features(wave.view(1, -1), num_layers=layer)[0][-1][0]
            torch.testing.assert_close(extractor(wave), from_original, atol=1e-4, rtol=1e-4)


def test_old_fairseq_checkpoint_with_argparse_args_and_normalize(tmp_path):
    """wav2vec_small.pt-style: no cfg, an argparse Namespace in `args`; normalize=True means the model expects
    zero-mean unit-variance audio."""
    original, state = _fairseq_checkpoint(tmp_path / "new.pt")
    args = argparse.Namespace(**{**FAIRSEQ_MODEL, "arch": "wav2vec2", "normalize": True})
    del args._name
    torch.save({"args": args, "cfg": None, "model": state}, tmp_path / "old.pt")
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "old.pt"), layer=2))
    assert extractor.family == "wav2vec2" and extractor.normalize_waveform
    wave = 2.5 * _waves()[1] + 0.05
    normalized = (wave - wave.mean()) / torch.sqrt(wave.var(unbiased=False) + 1e-7)
    expected = original.extract_features(normalized.view(1, -1), num_layers=2)[0][-1][0]
    torch.testing.assert_close(extractor(wave), expected, atol=1e-4, rtol=1e-4)


def test_huggingface_ctc_model_loads_without_its_head(tmp_path):
    torch.manual_seed(2)
    config = transformers.HubertConfig(**TINY, vocab_size=12)
    ctc = transformers.HubertForCTC(config).eval()
    ctc.save_pretrained(tmp_path / "ctc")
    wave = _waves()[0]
    with torch.no_grad():
        expected = ctc.hubert(wave.view(1, -1), output_hidden_states=True).hidden_states[2][0]
    extractor = build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "ctc"), layer=2))
    torch.testing.assert_close(extractor(wave), expected, atol=1e-4, rtol=1e-4)


def test_fairseq_config_reads_back_as_plain_data(tmp_path):
    _fairseq_checkpoint(tmp_path / "m.pt", fine_tuned=True)
    contents = load_pickled(tmp_path / "m.pt")
    assert contents["cfg"]["model"]["w2v_args"]["model"]["conv_feature_layers"] == FAIRSEQ_MODEL["conv_feature_layers"]
    assert contents["cfg"]["task"] == {"_name": "hubert_pretraining", "normalize": False}
    assert contents["optimizer_history"] == [{"num_updates": 5}]


# --- refusals -----------------------------------------------------------------------------------------------


class _Malicious:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"cfg": {}, "model": {"w": torch.zeros(1)}, "x": _Malicious(target)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"refused to unpickle (posix|nt)\.system"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "evil.pt")))
    assert not target.exists()
    # The same file through a Hugging Face folder's pytorch_model.bin.
    folder = tmp_path / "hf"
    _hf_model("hubert", folder)
    os.replace(tmp_path / "evil.pt", folder / "pytorch_model.bin")
    os.remove(folder / "model.safetensors")
    with pytest.raises(UnsafeCheckpointError):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(folder)))
    assert not target.exists()


def test_wrong_truncated_and_mismatched_files_get_named_errors(tmp_path):
    _fairseq_checkpoint(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable torch checkpoint"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "truncated.pt")))
    (tmp_path / "notes.pt").write_text("these are my notes, not a model")
    with pytest.raises(CheckpointError, match="notes.pt"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "notes.pt")))
    # The config says 3 layers of width 32; the weights of layer 1's fc1 are the wrong shape.
    contents = load_pickled(tmp_path / "good.pt")
    contents["model"]["encoder.layers.1.fc1.weight"] = torch.zeros(65, 32)
    contents["cfg"] = OmegaConf.create(contents["cfg"])
    torch.save(contents, tmp_path / "shapes.pt")
    shapes = r"feed_forward.intermediate_dense.weight.*\(65, 32\).*\(64, 32\)"
    with pytest.raises(CheckpointMismatchError, match=shapes):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "shapes.pt")))
    # One layer's weights missing.
    del contents["model"]["encoder.layers.2.fc2.bias"]
    contents["model"]["encoder.layers.1.fc1.weight"] = torch.zeros(64, 32)
    torch.save(contents, tmp_path / "missing.pt")
    with pytest.raises(CheckpointMismatchError, match=r"layers.2.feed_forward.output_dense.bias.*missing"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(tmp_path / "missing.pt")))


def test_huggingface_folder_of_another_model_type_is_named(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        build_extractor(FeatureConfig(name="ssl", checkpoint=str(folder)))
