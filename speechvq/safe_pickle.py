"""Reading pickled checkpoints (.pt, .bin) without running any of their code.

torch's weights-only unpickler is the allow-list: tensors, storages, ordered dicts, plain containers and scalars.
fairseq checkpoints also carry their config as argparse Namespaces or omegaconf containers; those class names
are mapped to inert stand-ins that only keep the pickled state, and `plain` turns them into dicts and lists.
Any other global (os.system, a model class, an enum of some library) is refused by name, before it is called."""

from __future__ import annotations

import collections
import pickle
import re
from pathlib import Path

import torch

from .errors import CheckpointError, UnsafeCheckpointError


class _ConfigStandIn:
    """Takes whatever the pickle gives (constructor arguments, BUILD state) and does nothing with it."""

    def __init__(self, *args, **kwargs):
        self.args, self.state = args, None

    def __setstate__(self, state):
        self.state = state


_CONFIG_CLASSES = (
    "argparse.Namespace",
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    *(f"omegaconf.nodes.{node}" for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")),
    *(f"omegaconf.nodes.{node}" for node in ("BytesNode", "PathNode", "ValueNode")),
    "typing.Any",
)
_STAND_INS = {
    name: type(name.rsplit(".", 1)[1], (_ConfigStandIn,), {"__module__": __name__}) for name in _CONFIG_CLASSES
}
# Class references that omegaconf metadata holds (object_type=dict, ...): harmless to name, never called with code.
_PLAIN_TYPES = [collections.defaultdict, dict, list, tuple, set, int, float, str, bool]


def load_pickled(path: str | Path) -> object:
    """A torch.save / pickle file -> its contents as tensors and plain data. Named errors: UnsafeCheckpointError
    for a refused global, CheckpointError for a file that is not a readable checkpoint (wrong or truncated)."""
    path = Path(path)
    allowed = [*_PLAIN_TYPES, *((stand_in, name) for name, stand_in in _STAND_INS.items())]
    try:
        with torch.serialization.safe_globals(allowed):
            contents = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:
            raise UnsafeCheckpointError(path, refused.group(1).rstrip(".")) from None
        raise CheckpointError(path, f"not a readable torch checkpoint ({_first_line(error)})") from None
    except Exception as error:  # torch's readers fail on foreign bytes in many ways (IndexError, KeyError, ...)
        raise CheckpointError(path, f"not a readable torch checkpoint, or truncated ({_first_line(error)})") from None
    return plain(contents)


def plain(value: object) -> object:
    """Stand-ins of config objects -> dicts, lists and scalars; everything else as it is (containers recursed)."""
    if isinstance(value, _ConfigStandIn):
        return _plain_config(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain(item) for item in value)
    return value


def _plain_config(stand_in: _ConfigStandIn) -> object:
    state = stand_in.state if isinstance(stand_in.state, dict) else {}
    if type(stand_in) is _STAND_INS["argparse.Namespace"]:
        return {key: plain(item) for key, item in state.items()}
    if "_content" in state:  # DictConfig / ListConfig (content None or '???' when unset)
        return plain(state["_content"])
    if "_val" in state:  # a value node
        return plain(state["_val"])
    return type(stand_in).__name__  # a type reference such as typing.Any


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
