"""Reading what the command line printed."""

from __future__ import annotations


def last_error(capsys) -> str:
    """The one error line of a command that failed as a user error should: `jumplora: error: ...`, no traceback."""
    err = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()
    assert err and err[-1].startswith("jumplora: error:") and "Traceback" not in "\n".join(err), err
    return err[-1]
