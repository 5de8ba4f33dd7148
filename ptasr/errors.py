"""The errors a user can fix, and the one way both entry points (``train.py``, ``ptasr``) report them.

ptasr raises a :class:`UserError` when the input or the settings are wrong: a path that does not exist, a
checkpoint that does not fit, a value out of range, a run that diverges. Its message names the offending value
and the way out, so the entry points print it as one line and exit with status 1::

    train.py: error: Common Voice root /data/cv does not exist; pass the extracted language folder ...

Anything else is a bug (ours or a library's) and keeps its traceback. ``PTASR_TRACEBACK=1`` shows the
traceback of user errors too.

The subclasses also derive from the built-in type a caller would expect (``ValueError``,
``FileNotFoundError`` ...), so ``except ValueError`` around a ptasr call keeps working.

>>> issubclass(SettingError, ValueError) and issubclass(SettingError, UserError)
True
>>> one_line("train.py", MissingPathError("no audio file or folder at x.wav"))
'train.py: error: no audio file or folder at x.wav'
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

TRACEBACK_VARIABLE = "PTASR_TRACEBACK"


class UserError(Exception):
    """A problem with the user's input or settings; the message says what and how to fix it."""


class SettingError(UserError, ValueError):
    """A setting (argument, config value or combination of them) ptasr cannot run with."""


class UnknownFieldError(SettingError, TypeError):
    """A field name a config does not have (a typo in ``model.config_overrides``, say)."""


class DataError(UserError, ValueError):
    """Data that cannot be used: a malformed TSV, no utterances left, a vocabulary that does not fit."""


class MissingPathError(UserError, FileNotFoundError):
    """A file or folder the user named (or one that must be in it) does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or model folder that cannot be read, or does not fit the model; the message lists why."""


class StorageError(UserError, OSError):
    """A file or folder ptasr must write cannot be: a read-only folder, a path under a file, a full disk
    (``ptasr.storage`` words the line)."""


class HubError(UserError, OSError):
    """The Hugging Face hub could not be reached or refused; the message says how to do without it."""


def one_line(prog: str, error: BaseException) -> str:
    """``prog: error: message``, the message's whitespace (newlines included) collapsed to single spaces."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"{prog}: error: {message}"


def exit_status(
    run: Callable[[], int | None],
    prog: str | Callable[[BaseException], str],
    user_errors: tuple[type[BaseException], ...] = (UserError,),
    silent: Callable[[BaseException], bool] = lambda error: False,
) -> int:
    """Run ``run()`` and return its exit status; a user error prints one line on stderr and returns 1.

    Args:
        run: the command; its return value is the exit status (None: 0).
        prog: the program name that starts the line (``train.py``, ``ptasr evaluate``), or a function of the error
            that gives it when the line is printed (a DDP rank knows its rank only once training started).
        user_errors: the types reported in one line: :class:`UserError`, plus any a library raises for
            settings the user gave (Lightning's ``MisconfigurationException``).
        silent: errors for which nothing is printed (the other DDP ranks of an error every rank raises).

    With ``PTASR_TRACEBACK=1`` in the environment, user errors propagate with their traceback.
    """
    try:
        return run() or 0
    except user_errors as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        if not silent(error):
            print(one_line(prog(error) if callable(prog) else prog, error), file=sys.stderr)
        return 1
