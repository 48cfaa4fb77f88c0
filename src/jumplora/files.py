"""Writing files so that a reader, or a crash, never sees half of one; hashing what was written.

Every file jumplora writes goes through here: :func:`write_text` / :func:`write_json` write beside
the target and rename (atomic on POSIX), :func:`publish_folder` renames a finished folder into a
place that must not exist yet (two writers racing for one output: one wins, the other is told).
Files get the permissions of the user's umask, like any file the user's shell would create.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from jumplora.errors import JumploraError


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_sha256(value) -> str:
    """The SHA-256 of a JSON value in its canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=1))


def write_text(path: Path, text: str) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def publish_folder(tmp: Path, folder: Path, replace: bool) -> None:
    """Rename the finished folder ``tmp`` to ``folder``.

    ``replace``: an older ``folder`` is swapped out (kept as ``<folder>.old`` until the new one is
    in place, so a crash leaves one of the two whole). Otherwise ``folder`` must not exist, or be
    an empty folder: a rename that finds it taken (another writer got there first) is an error.
    """
    if replace and folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        # os.rename onto an empty folder succeeds on POSIX, onto a non-empty one fails: that is
        # the atomic "create if free" two concurrent writers need.
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if folder.exists():
            raise JumploraError(f"{folder} was written by another command meanwhile: pass a new --output folder") from None
        raise


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written atomically, with the umask's mode (safetensors itself makes it 0600)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, umask_mode())
    tmp.replace(path)


def check_new_output(folder: Path) -> None:
    """A command that writes a new folder refuses one that exists with something in it."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise JumploraError(f"{folder} already exists and is not an empty folder: pass a new --output folder")


def check_outside(output: Path, folder: Path, flag: str = "--output") -> None:
    """A command's output must not be, or be inside, the model folder it reads (nor contain it)."""
    out, model = Path(output).resolve(), Path(folder).resolve()
    if out == model or out.is_relative_to(model) or model.is_relative_to(out):
        raise JumploraError(f"{flag} {output} is inside (or around) the model folder {folder}: write it beside the "
                            "model folder")


def umask_mode(executable: bool = False) -> int:
    """The mode a new file gets under the process's umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if executable else 0o666) & ~mask


def follow_umask(folder: Path) -> None:
    """Give ``folder`` and everything below it the umask's modes (safetensors writes its files 0600,
    a temporary folder is made 0700): what a command writes is as readable as the user's other files."""
    files, folders = umask_mode(), umask_mode(executable=True)
    os.chmod(folder, folders)
    for path in Path(folder).rglob("*"):
        os.chmod(path, files if path.is_file() else folders)
