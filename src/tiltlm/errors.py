"""The three kinds of failure a user can cause or meet, each reported as one clear line (never a traceback).

Every layer raises these and only the command line turns them into `error: ...` and an exit code, so a library
user (`tiltlm.train(...)` in a notebook) can catch them by type.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A mistake in the options: an unknown flag, a bad value, a missing model or output folder."""


class DataError(Exception):
    """A mistake in the user's data or data options. ``str(e)`` is a readable (possibly multi-line) summary."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite losses K steps in a row); the message says why and what to do."""


__all__ = ["ConfigError", "DataError", "TrainingError"]
