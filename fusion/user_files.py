"""The one writer of a user's files: every file FusionLab writes outside its workspace at a path a person chose (an
export's ``--out``, every ``--csv``, a sweep's tables) goes through :func:`write_user_file`.

Its rules, checked by :func:`check_user_target` before any work so that a refused path costs nothing:

- the path is not empty and its folder exists;
- the folder does not lie inside a protected folder (the workspace, whose files only the workspace writes);
- an existing target is a regular file (never a folder, device, FIFO or symbolic link: links are not followed, so a
  link into the workspace or to a user's checkpoint cannot be written through), and is replaced only with
  ``overwrite`` (the command line's ``--force``);
- the bytes are written to a temporary file beside the target, flushed to disk and moved into place, so the target
  is whole or untouched; without ``overwrite`` the move refuses a file that appeared meanwhile.

Every refusal is an :class:`~fusion.errors.OutputFileError` whose message names the path.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_user_file(folder / "rows.csv", b"a,b\\n1,2\\n").read_bytes()
b'a,b\\n1,2\\n'
>>> write_user_file(folder / "rows.csv", b"again")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fusion.errors.OutputFileError: ... already exists; choose another path or allow overwriting it (--force)
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fusion.errors import OutputFileError

EXISTS = "{} already exists; choose another path or allow overwriting it (--force)"


def check_user_target(path: str | Path, *, overwrite: bool = False, protected: Iterable[Path] = ()) -> Path:
    """``path`` (``~`` expanded) if :func:`write_user_file` may write it, else :class:`OutputFileError` naming it."""
    if not str(path).strip():
        raise OutputFileError("the output path is empty: give a file path")
    target = Path(path).expanduser()
    try:
        folder = target.parent.resolve()
    except (OSError, RuntimeError) as exc:
        raise OutputFileError(f"cannot write {target}: its folder cannot be resolved ({exc})") from exc
    for root in protected:
        root = Path(root).expanduser().resolve()
        if folder.is_relative_to(root):
            raise OutputFileError(
                f"{target} is inside the workspace at {root}, whose files only FusionLab itself writes; "
                "choose a path outside it"
            )
    if not folder.is_dir():
        raise OutputFileError(f"cannot write {target}: there is no folder {target.parent}")
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputFileError(f"cannot write {target}: {exc.strerror}") from exc
    if stat.S_ISLNK(mode):
        raise OutputFileError(f"{target} is a symbolic link; FusionLab does not write through links")
    if not stat.S_ISREG(mode):
        raise OutputFileError(f"{target} exists and is not a regular file; only files are created or replaced")
    if not overwrite:
        raise OutputFileError(EXISTS.format(target))
    return target


def write_user_file(path: str | Path, data: bytes, *, overwrite: bool = False, protected: Iterable[Path] = ()) -> Path:
    """Write ``data`` to ``path`` by the rules above; returns the path written."""
    target = check_user_target(path, overwrite=overwrite, protected=protected)
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:100]}.", suffix=".tmp")
    except OSError as exc:
        raise OutputFileError(f"cannot write {target}: {exc.strerror}") from exc
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, target)
        else:
            place_new_file(temporary, target)
    except FileExistsError as exc:
        raise OutputFileError(EXISTS.format(target)) from exc
    except OSError as exc:
        raise OutputFileError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def place_new_file(source: str, target: Path) -> None:
    """Move ``source`` to ``target`` only if ``target`` does not exist (``FileExistsError`` otherwise), atomically
    where the filesystem has hard links."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # vfat and some network filesystems have no hard links: check, then rename (not atomic against a racer)
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from exc
        os.rename(source, target)
