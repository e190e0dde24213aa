"""Exceptions that carry a message fit for a user: which file, line or field, and what is wrong.

The CLI turns any :class:`LiteRecError` into that message and a non-zero exit, without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LiteRecError(Exception):
    """Base class: a problem with the user's input, environment or data, not a bug."""

    exit_code = 2


class ConfigError(LiteRecError, ValueError):
    """A config file, profile, override or deployment parameter is invalid; names the field."""


class DataError(LiteRecError):
    """Raw or processed data is malformed: names the file and, where known, line and field."""


class DownloadError(LiteRecError):
    """A download failed or was cut off; the partial file was kept apart from the cache."""


class ChecksumError(DownloadError):
    """A downloaded payload does not match its expected checksum."""


class ValidationFailed(LiteRecError):
    """A Great Expectations suite failed; the message summarises expectations and examples."""


class CacheMismatch(LiteRecError):
    """A cache (item vectors, checkpoint) does not match the current config or inputs."""
