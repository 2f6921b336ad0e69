"""speechvq: speech audio -> features -> codebook -> discrete units, with metrics."""

from .api import UnitEncoder, load
from .codebook import Codebook, load_codebook
from .errors import SpeechVQError

__all__ = ["Codebook", "SpeechVQError", "UnitEncoder", "load", "load_codebook"]
__version__ = "0.1.0"
