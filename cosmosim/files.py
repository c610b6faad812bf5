"""Output that loses nothing: every file cosmosim writes appears whole or not at all (temp file +
rename), an output path may not be an input or another output, and a results folder has one writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cosmosim.errors import InputError

CACHE_DIR_ENV = "COSMOSIM_CACHE_DIR"


def cache_dir() -> Path:
    """The user's cosmosim cache folder: $COSMOSIM_CACHE_DIR, else $XDG_CACHE_HOME/cosmosim,
    else ~/.cache/cosmosim. Calibrated profiles and default scratch folders go here, never into
    the repository."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cosmosim"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _refuse_folder(path: Path, label: str) -> None:
    """An output path must name a file: "" and "." are the working folder, not a file."""
    if str(path) in ("", ".") or path.is_dir():
        raise InputError(f"{label}: is a folder, not a file path; give a file name")


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_outputs(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None] | None = None) -> None:
    """Refuse, before any work, output paths that would clobber an input or each other, or that no
    file can be written to. Keys are what the user typed them as (`--json`); None values are skipped."""
    given_outputs = {flag: Path(path) for flag, path in outputs.items() if path is not None}
    given_inputs = {flag: Path(path) for flag, path in (inputs or {}).items() if path is not None}
    seen: dict[str, Path] = {}
    for flag, path in given_outputs.items():
        _refuse_folder(path, f"{flag} {str(path) or repr('')}")
        for input_flag, input_path in given_inputs.items():
            if _same(path, input_path):
                raise InputError(f"{flag} {path}: is the {input_flag} input; writing it would destroy it")
        for other_flag, other in seen.items():
            if _same(path, other):
                raise InputError(f"{flag} {path}: is also {other_flag}; one would overwrite the other")
        seen[flag] = path


def check_outside(path: str | Path, folder: str | Path, flag: str) -> None:
    """Refuse an output inside a folder cosmosim owns (a results folder), where it would be taken for its data."""
    if Path(folder).resolve() in (Path(path).resolve(), *Path(path).resolve().parents):
        raise InputError(f"{flag} {path}: is inside {folder}, which holds results; write it elsewhere")


@contextmanager
def exclusive_folder(folder: str | Path, flag: str) -> Iterator[Path]:
    """Hold `folder` for this process alone: a second process is refused while the first runs, and a
    killed process leaves nothing stuck (the kernel drops the lock, taken on the folder itself, with it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{flag} {folder}: another cosmosim process is writing to it; wait for it to finish "
                             "or choose another folder") from None
        yield folder
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside `path` for a writer that needs a file name (a library writing a large file):
    it becomes `path` when the block ends, and is removed if the block raises."""
    path = Path(path)
    _refuse_folder(path, str(path) or repr(""))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs should read like any new file
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, *, hint: str) -> object:
    """A JSON file's content; a missing or malformed file is an InputError naming it, with `hint`
    (what the user should do) appended."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; {hint}")
    try:
        return json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); {hint}") from None


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
