"""The three kinds of failure a user can cause or meet, each reported as one clear line (never a traceback).

Every layer raises these and only the command line turns them into `error: ...` and an exit code, so a library
user (`tiltlm.train(...)` in a notebook) can catch them by type.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from safetensors import SafetensorError


class ConfigError(ValueError):
    """A mistake in the options: an unknown flag, a bad value, a missing model or output folder."""


class DataError(Exception):
    """A mistake in the user's data or data options. ``str(e)`` is a readable (possibly multi-line) summary."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. non-finite losses K steps in a row); the message says why and what to do."""


@contextlib.contextmanager
def writing(what: str) -> Iterator[None]:
    """Report any failure to write `what` as one OSError that names it.

    A full disk does not surface as one exception type: Python's own writes raise OSError (ENOSPC), torch.save
    raises RuntimeError ("[enforce fail at inline_container.cc] unexpected pos ..."), safetensors raises
    SafetensorError. Callers then handle one type: keep the last good state and say so, or stop with one line."""
    try:
        yield
    except OSError as e:
        raise OSError(f"cannot write {what}: {e.strerror or e}") from e
    except (RuntimeError, SafetensorError) as e:
        raise OSError(f"cannot write {what} (is the disk full?): {first_line(e)}") from e


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can be long), or its type's name; with the next
    line when the first only introduces it (dynamo's "backend='inductor' raised:" and the compiler's error)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


__all__ = ["ConfigError", "DataError", "TrainingError", "writing", "first_line"]
