"""Named errors. Every error raised for bad user input is a SpeechVQError subclass
that names the offending file or value, so a batch job can report it and move on."""

from __future__ import annotations

from pathlib import Path


class SpeechVQError(Exception):
    """Base class of every error speechvq raises on purpose."""


class DatasetNotFoundError(SpeechVQError):
    def __init__(self, path: str | Path):
        self.path = str(path)
        super().__init__(f"dataset path does not exist: {self.path}")


class EmptyDatasetError(SpeechVQError):
    def __init__(self, path: str | Path, detail: str = "no audio files found"):
        self.path = str(path)
        super().__init__(f"{detail}: {self.path}")


class ManifestError(SpeechVQError):
    def __init__(self, path: str | Path, line_number: int | None, reason: str):
        self.path, self.line_number, self.reason = str(path), line_number, reason
        where = f"{self.path}:{line_number}" if line_number is not None else self.path
        super().__init__(f"bad manifest {where}: {reason}")


class AudioDecodeError(SpeechVQError):
    """A file that cannot be turned into a usable waveform (missing, empty, corrupt, ...)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read audio {self.path}: {reason}")


class AlignmentError(SpeechVQError):
    def __init__(self, source: str | Path, reason: str):
        self.source, self.reason = str(source), reason
        super().__init__(f"bad alignment {self.source}: {reason}")


class CodebookFileError(SpeechVQError):
    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot load codebook {self.path}: {reason}")


class CodebookMismatchError(SpeechVQError):
    """Features and codebook disagree (dimension or feature configuration)."""

    def __init__(self, what: str, expected: object, got: object):
        self.what, self.expected, self.got = what, expected, got
        super().__init__(f"codebook {what} mismatch: codebook expects {expected!r}, features have {got!r}")


class MissingArtifactError(SpeechVQError):
    def __init__(self, path: str | Path, stage: str):
        self.path, self.stage = str(path), stage
        super().__init__(
            f"stage '{stage}' needs {self.path}, which does not exist; run the stage that makes it first "
            f"(or point the config at an earlier run)"
        )


class ConfigError(SpeechVQError):
    def __init__(self, key: str, value: object, reason: str):
        self.key, self.value, self.reason = key, value, reason
        super().__init__(f"bad config {key}={value!r}: {reason}")


class CheckpointError(SpeechVQError):
    """A model checkpoint that cannot be used: unreadable, truncated, or not a model speechvq knows."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot load checkpoint {self.path}: {reason}")


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that asks to run code outside the allow-list; nothing of it was executed."""

    def __init__(self, path: str | Path, refused: str):
        self.refused = refused
        super().__init__(path, f"refused to unpickle {refused} (only tensors, plain containers and config data load)")


class CheckpointMismatchError(CheckpointError):
    """Weights that do not fit the architecture the checkpoint's own config describes."""

    def __init__(self, path: str | Path, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(path, f"weight {key!r}: {problem}")


class DiskFullError(SpeechVQError):
    """The filesystem ran out of space while writing `path` (or would, by the features stage's estimate). Nothing
    under the final name is partial; free space and run the same command again to resume."""

    def __init__(self, path: str | Path, detail: str):
        self.path, self.detail = str(path), detail
        super().__init__(f"no space left for {self.path}: {detail}; free space and run again to resume")


class RunFolderBusyError(SpeechVQError):
    """Another live process is writing the run folder: two writers would mix their outputs."""

    def __init__(self, folder: str | Path, host: str, pid: int, since: str):
        self.folder, self.host, self.pid = str(folder), host, pid
        super().__init__(
            f"{self.folder} is in use by process {pid} on {host} (since {since}); wait for it, use another run folder "
            f"(hydra.run.dir=...), or, if that process is gone, delete {Path(folder) / '.speechvq' / 'lock'}"
        )
