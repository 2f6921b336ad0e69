"""A pretrained HuBERT / wav2vec 2.0 / WavLM checkpoint as users hold it -> a torchaudio model with its weights.

Formats: a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin, sharded or not), a
fairseq checkpoint (pretraining or CTC fine-tuning; its config as omegaconf containers or an argparse Namespace),
or a bare torchaudio state dict (.safetensors, or torch.save) whose architecture a named preset gives. The
architecture always comes from the checkpoint's own config; pickles are read by speechvq.safe_pickle."""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio
from safetensors.torch import load_file
from torchaudio.models.wav2vec2.utils.import_fairseq import _map_key as fairseq_to_torchaudio_key
from torchaudio.models.wav2vec2.utils.import_huggingface import transform_wavlm_encoder_state

from ..errors import CheckpointError, CheckpointMismatchError, ConfigError
from ..registry import Registry
from ..safe_pickle import load_pickled

SSL_MODELS = Registry("features.ssl_model")  # presets for bare torchaudio state dicts
for _name in ("hubert_base", "hubert_large", "wav2vec2_base", "wav2vec2_large", "wavlm_base", "wavlm_large"):
    SSL_MODELS.register(_name, f"torchaudio.models:{_name}")
HF_FAMILIES = ("hubert", "wav2vec2", "wavlm")
FAIRSEQ_CONV_DEFAULT = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"


@dataclass(frozen=True)
class SSLCheckpoint:
    model: torch.nn.Module  # torchaudio Wav2Vec2Model (WavLM included), eval mode, on the CPU
    family: str  # hubert | wav2vec2 | wavlm
    source: str  # huggingface | fairseq | torchaudio
    normalize_waveform: bool  # the model was trained on per-utterance zero-mean unit-variance audio
    fingerprint: str  # of the weight (and config) files


def read_checkpoint(path: str | Path, preset: str | None = None) -> SSLCheckpoint:
    path = Path(path)
    if not path.exists():
        raise ConfigError("features.checkpoint", str(path), "does not exist (nothing is downloaded)")
    folder = path if path.is_dir() else path.parent
    if path.is_dir() or (folder / "config.json").exists():
        return _huggingface(folder, path)
    contents = load_file(str(path)) if path.suffix == ".safetensors" else load_pickled(path)
    if isinstance(contents, dict) and "model" in contents and ("cfg" in contents or "args" in contents):
        return _fairseq(path, contents)
    if not preset:
        raise CheckpointError(path, "a bare state dict without a config: name its architecture in features.ssl_model")
    model = SSL_MODELS.get(preset)()
    _load_weights(model, _tensors(path, contents), path)
    return SSLCheckpoint(model.eval(), preset.split("_")[0], "torchaudio", False, _fingerprint([path]))


# --- Hugging Face -----------------------------------------------------------------------------------------


def _huggingface(folder: Path, given: Path) -> SSLCheckpoint:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise CheckpointError(given, "a folder without config.json is not a Hugging Face model folder")
    config = json.loads(config_path.read_text())
    family = config.get("model_type")
    if family not in HF_FAMILIES:
        raise CheckpointError(config_path, f"model_type {family!r} is not one of {', '.join(HF_FAMILIES)}")
    files = [given] if given.is_file() and given != config_path else _hf_weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_tensors(file, load_file(str(file)) if file.suffix == ".safetensors" else load_pickled(file)))
    model = _build(family, _hf_architecture(config, config_path))
    _load_weights(model, _hf_to_torchaudio(state, family, model), files[0])
    preprocessor = folder / "preprocessor_config.json"
    normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize")) if preprocessor.exists() else False
    return SSLCheckpoint(model.eval(), family, "huggingface", normalize, _fingerprint([config_path, *files]))


def _hf_weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).exists():
            shards = json.loads((folder / index_name).read_text())["weight_map"].values()
            return [folder / name for name in sorted(set(shards))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return [folder / name]
    raise CheckpointError(folder, "no model.safetensors or pytorch_model.bin beside config.json")


def _hf_architecture(config: dict, source: Path) -> dict:
    """transformers' config.json (its defaults where a key is absent) -> torchaudio's model arguments."""
    unsupported = {
        "feat_extract_activation": "gelu",
        "hidden_act": "gelu",
        "feat_proj_layer_norm": True,
        "conv_pos_batch_norm": False,
        "add_adapter": False,
        "layer_norm_eps": 1e-5,
    }
    for key, supported in unsupported.items():
        if config.get(key, supported) != supported:
            reason = f"{key}={config[key]!r} is not supported (torchaudio's models use {supported})"
            raise CheckpointError(source, reason)
    conv = zip(
        config.get("conv_dim", [512] * 7), config.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]),
        config.get("conv_stride", [5, 2, 2, 2, 2, 2, 2]),
    )  # fmt: skip
    architecture = {
        "extractor_mode": f"{config.get('feat_extract_norm', 'group')}_norm",
        "extractor_conv_layer_config": [tuple(layer) for layer in conv],
        "extractor_conv_bias": config.get("conv_bias", False),
        "encoder_embed_dim": config.get("hidden_size", 768),
        "encoder_pos_conv_kernel": config.get("num_conv_pos_embeddings", 128),
        "encoder_pos_conv_groups": config.get("num_conv_pos_embedding_groups", 16),
        "encoder_num_layers": config.get("num_hidden_layers", 12),
        "encoder_num_heads": config.get("num_attention_heads", 12),
        "encoder_ff_interm_features": config.get("intermediate_size", 3072),
        "encoder_layer_norm_first": config.get("do_stable_layer_norm", False),
    }
    if config["model_type"] == "wavlm":
        architecture["encoder_num_buckets"] = config.get("num_buckets", 320)
        architecture["encoder_max_distance"] = config.get("max_bucket_distance", 800)
    return architecture


def _hf_to_torchaudio(state: dict, family: str, model: torch.nn.Module) -> dict:
    """transformers' key names -> torchaudio's. Heads (CTC, pretraining quantizer, mask embedding) are dropped."""
    state = {key.removeprefix(f"{family}."): value for key, value in state.items()}
    encoder = {key.removeprefix("encoder."): v for key, v in state.items() if key.startswith("encoder.")}
    if family == "wavlm" and any(".attention.q_proj." in key for key in encoder):
        transform_wavlm_encoder_state(encoder, len(model.encoder.transformer.layers))
    mapped = {key: v for key, v in state.items() if key.startswith("feature_extractor.")}
    mapped.update({f"encoder.{key}": v for key, v in state.items() if key.startswith("feature_projection.")})
    mapped.update({f"encoder.transformer.{key}": v for key, v in encoder.items()})
    return mapped


# --- fairseq ----------------------------------------------------------------------------------------------


def _fairseq(path: Path, contents: dict) -> SSLCheckpoint:
    config = contents.get("cfg") or {"model": contents["args"], "task": contents["args"]}
    model_config, task_config = config.get("model") or {}, config.get("task") or {}
    pretraining = model_config.get("w2v_args")  # a CTC fine-tuned model wraps its pretraining config
    if pretraining is not None:
        pretraining = pretraining if "model" in pretraining else {"model": pretraining, "task": pretraining}
        model_config, task_config = pretraining["model"], {**pretraining.get("task", {}), **task_config}
    name = str(model_config.get("_name") or model_config.get("arch") or "wav2vec2")
    family = "hubert" if name.startswith("hubert") else "wav2vec2"
    model = _build(family, _fairseq_architecture(model_config, path))
    state = {}
    for key, value in _tensors(path, contents["model"]).items():
        try:
            mapped = fairseq_to_torchaudio_key(key.removeprefix("w2v_encoder."))
        except ValueError:
            raise CheckpointMismatchError(path, key, "not a HuBERT / wav2vec 2.0 weight fairseq writes") from None
        if mapped is not None and not mapped.startswith("aux.") and mapped != "label_embs_concat":
            state[mapped] = value
    _load_weights(model, state, path)
    normalize = bool(task_config.get("normalize", False))
    return SSLCheckpoint(model.eval(), family, "fairseq", normalize, _fingerprint([path]))


def _fairseq_architecture(config: dict, source: Path) -> dict:
    """fairseq's Wav2Vec2Config / HubertConfig fields (fairseq's defaults where absent) -> torchaudio's arguments."""
    for key, supported in {"activation_fn": "gelu", "pos_conv_depth": 1}.items():
        if config.get(key, supported) != supported:
            raise CheckpointError(source, f"{key}={config[key]!r} is not supported")
    mode = config.get("extractor_mode", "default")
    return {
        "extractor_mode": "group_norm" if mode == "default" else "layer_norm",
        "extractor_conv_layer_config": _conv_layers(config.get("conv_feature_layers", FAIRSEQ_CONV_DEFAULT), source),
        "extractor_conv_bias": bool(config.get("conv_bias", False)),
        "encoder_embed_dim": config.get("encoder_embed_dim", 768),
        "encoder_pos_conv_kernel": config.get("conv_pos", 128),
        "encoder_pos_conv_groups": config.get("conv_pos_groups", 16),
        "encoder_num_layers": config.get("encoder_layers", 12),
        "encoder_num_heads": config.get("encoder_attention_heads", 12),
        "encoder_ff_interm_features": config.get("encoder_ffn_embed_dim", 3072),
        "encoder_layer_norm_first": bool(config.get("layer_norm_first", False)),
    }


def _conv_layers(text: str, source: Path) -> list[tuple[int, int, int]]:
    """fairseq's conv_feature_layers, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", evaluated without eval():
    only list and tuple literals of integers, + and * are accepted."""

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [value(item) for item in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return value(node.left) * value(node.right)
        raise ValueError(ast.dump(node)[:80])

    try:
        layers = [tuple(layer) for layer in value(ast.parse(str(text), mode="eval").body)]
        if not layers or any(len(layer) != 3 for layer in layers):
            raise ValueError("not triples")
        return layers
    except (SyntaxError, ValueError, TypeError) as error:
        raise CheckpointError(source, f"conv_feature_layers {text!r} is not a list of (dim, kernel, stride)") from error


# --- shared -----------------------------------------------------------------------------------------------


def _build(family: str, architecture: dict) -> torch.nn.Module:
    """An inference-only torchaudio model (dropouts and layer drop off)."""
    zero = {"encoder_projection_dropout": 0.0, "encoder_attention_dropout": 0.0, "encoder_ff_interm_dropout": 0.0}
    zero.update({"encoder_dropout": 0.0, "encoder_layer_drop": 0.0, "aux_num_out": None})
    build = torchaudio.models.wavlm_model if family == "wavlm" else torchaudio.models.wav2vec2_model
    return build(**architecture, **zero)


def _tensors(path: Path, contents: object) -> dict[str, torch.Tensor]:
    if not isinstance(contents, dict) or not all(isinstance(v, torch.Tensor) for v in contents.values()):
        raise CheckpointError(path, "expected a state dict (names -> tensors)")
    return contents


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict loading with a named error for the first missing, unexpected or mis-shaped weight."""
    renamed = {  # weight-norm weights as older checkpoints name them
        key.replace(".conv.weight_g", ".conv.parametrizations.weight.original0").replace(
            ".conv.weight_v", ".conv.parametrizations.weight.original1"
        ): value
        for key, value in state.items()
    }
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in renamed:
            raise CheckpointMismatchError(path, key, "missing from the checkpoint (its config describes it)")
        if renamed[key].shape != tensor.shape:
            raise CheckpointMismatchError(
                path, key, f"shape {tuple(renamed[key].shape)}, the config implies {tuple(tensor.shape)}"
            )
    unexpected = [key for key in renamed if key not in expected]
    if unexpected:
        raise CheckpointMismatchError(path, unexpected[0], "not part of the architecture the config describes")
    model.load_state_dict({key: value.float() for key, value in renamed.items()})


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]
