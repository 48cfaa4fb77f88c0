"""A GGUF file checked whole before a run reads it: its header, its metadata and every tensor's bytes."""

from __future__ import annotations

import struct
from pathlib import Path

from jumplora.errors import JumploraError


_CHECKED: set[tuple] = set()


def check_gguf(path: Path) -> None:
    """Parse the file with the gguf package's reader, which maps every tensor's data: a truncated
    or damaged file is a one-line error here, not a traceback in the middle of loading."""
    from gguf import GGUFReader

    stat = Path(path).stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:  # a file read whole once in this process (a sweep, the tests)
        return
    try:
        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("it holds no tensors")
    except (ValueError, struct.error, EOFError, OSError, KeyError, IndexError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise JumploraError(f"cannot read the GGUF file {path} ({reason}): the file is truncated or damaged; "
                            "download or copy it again") from None
    _CHECKED.add(key)
