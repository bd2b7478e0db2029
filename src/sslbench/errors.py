"""Every exception type that one part of sslbench raises and another catches, and ``one_line``,
the one way an error (or any text) becomes a single line for the user.

The bottom of the package: it imports nothing of sslbench and no torch, so any module (the
torch-free command line and report included) can import it without closing an import circle.
"""

from __future__ import annotations

import re
import signal

__all__ = [
    "CONTROL_CHARACTERS",
    "BackboneError",
    "ConfigError",
    "DownloadError",
    "ExportError",
    "ExtractError",
    "NoSpaceError",
    "NonFiniteLossError",
    "OutOfGPUMemory",
    "Requeued",
    "RunFolderError",
    "Stopped",
    "UsageError",
    "one_line",
]

# Control characters (newlines, terminal escapes) and Unicode line separators: text from run
# folders, archives and servers is untrusted, and a message must not move the terminal.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text_or_exception: object, limit: int | None = None) -> str:
    """The first line of ``text_or_exception`` (``str()`` of it) that says something, with
    its control characters replaced by spaces and its ends stripped; an exception with an
    empty message gives its type's name. At most ``limit`` characters (the last one "…")."""
    text = str(text_or_exception)
    lines = (CONTROL_CHARACTERS.sub(" ", line).strip() for line in text.splitlines())
    first = next((line for line in lines if line), "")
    if not first and isinstance(text_or_exception, BaseException):
        first = type(text_or_exception).__name__
    if limit is not None and len(first) > limit:
        first = first[: limit - 1] + "…"
    return first


class ConfigError(ValueError):
    """A bad configuration value; its message is one line meant for the user."""


class BackboneError(ConfigError):
    """A backbone that cannot be built as asked; the message is one line."""


class UsageError(Exception):
    """A command-line mistake; the message is one line."""


class RunFolderError(ValueError):
    """Why a run folder cannot be read; the message is one line."""


class Requeued(Exception):  # noqa: N818 - not an error: the job continues in its next start
    """A SLURM job was preempted and requeued after its checkpoint was written
    (sslbench.run.cluster); the run's status is ``requeued`` until its next start resumes it."""


class Stopped(KeyboardInterrupt):
    """A run stopped by a signal (Ctrl-C's SIGINT, or SIGTERM) with its checkpoint kept; the
    command exits 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGINT))


class OutOfGPUMemory(RuntimeError):
    """The GPU ran out of memory; the message names a setting to lower."""


class NoSpaceError(OSError):
    """The disk is full; str(err) is one line naming the folder, the need and what is free."""

    def __str__(self) -> str:
        return str(self.strerror)


class ExtractError(RuntimeError):
    """An archive could not be extracted; str(err) is one line naming it and why."""


class DownloadError(RuntimeError):
    """A download failed; str(err) is one line naming the URL (or file) and where to put the
    archive by hand. (Extraction raises :class:`ExtractError`.)"""


class ExportError(ConfigError):
    """An export that cannot be made as asked; the message is one line (exit status 2)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""
