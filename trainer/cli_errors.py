"""How every ``elab-*`` command reports bad input: one line naming the key, file or path, exit 2;
a bug keeps its traceback. Standard library only, so ``elab-analyze`` and ``elab-plot`` stay free
of the training stack."""

from __future__ import annotations

import errno
import sys

# A path the user chose cannot be made, read or written (read-only, missing parent, not a
# directory, a directory where a file belongs, a full disk).
PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.ENOSPC,
               errno.EISDIR, errno.EEXIST)


def path_problem(exc: BaseException) -> str | None:
    """``PATH: what is wrong`` for an OSError on a named path, else None."""
    if isinstance(exc, OSError) and exc.filename and exc.errno in PATH_ERRORS:
        return f"{exc.filename}: {exc.strerror}"
    return None


def report_bad_input(prog: str, exc: Exception, hint: str = "") -> int:
    """Called in an ``except`` block of a command's main: print bad input (a ValueError, which
    names its key or file; a path that cannot be read or written) as one line and return 2;
    re-raise anything else (a bug, with its traceback)."""
    if isinstance(exc, ValueError):
        message = str(exc)
    elif (message := path_problem(exc)) is not None:
        message += f" ({hint})" if hint else ""
    else:
        raise exc
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
