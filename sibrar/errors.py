"""Every exception and warning class sibrar raises, in one place."""

from __future__ import annotations


class SibrarError(Exception):
    """Base class: a problem the user can fix. The CLI prints the message on one line and exits 2."""


class DataError(SibrarError):
    """Malformed or inconsistent input data (atomic files, feature files, id maps)."""


class FetchError(SibrarError):
    """A dataset or wheel could not be fetched or verified; nothing was written."""


class SplitError(SibrarError):
    """A split cannot be built or loaded (bad ratios, empty parts, stale manifest)."""


class ConfigError(SibrarError):
    """An unknown key, a value of the wrong type or an inconsistent combination in a config."""


class UnknownNameError(ConfigError):
    """A registry lookup (model, source, protocol, metric) failed; the message lists valid names."""


class EncoderError(SibrarError):
    """An encoder cannot be loaded or run."""


class RetrievalError(SibrarError):
    """Bad retrieval request: unknown id, bad k, an index from another run, wrong feature shape."""


class FileReadError(SibrarError):
    """A file cannot be read: missing, unreadable, not UTF-8, truncated or corrupt (checkpoints, indexes)."""


class RunFolderError(SibrarError):
    """A run folder is busy (another process writes it), already holds a finished run, or mixes runs."""


class IntegrityError(DataError):
    """A built data file no longer matches the checksum recorded when it was fetched."""


class NotFoundError(RetrievalError):
    """An id (user, item) the served run does not know; HTTP 404."""


class ConflictError(RetrievalError):
    """A new item id that is already in the catalogue; HTTP 409."""


class TrainingError(SibrarError):
    """A run failed in a way that is not bad input (diverged loss, broken checkpoint). Exit code 3."""


class DataWarning(UserWarning):
    """A recoverable oddity in the data (dropped rows, missing modality values)."""
