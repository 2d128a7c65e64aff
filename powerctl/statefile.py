"""Bounded, validated reads of the daemon's state files (``leases.json`` and the like).

The state directory is a trust boundary (README, threat model): a file there may be truncated,
huge, deeply nested, a symlink to ``/dev/zero`` or a FIFO. ``read_state_json`` reads at most
``max_bytes``, only from a regular file reached without following a symlink at the last step
(O_NOFOLLOW) and without blocking on a FIFO (O_NONBLOCK), and parses JSON with a nesting limit.
Anything wrong is ``StateFileError`` naming the file and the problem; the caller treats it as
"no state" (the safe default) and logs that line.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

MAX_STATE_BYTES = 1 << 20  # leases.json is a few hundred bytes
MAX_DEPTH = 32  # the deepest valid state document nests 3 levels


class StateFileError(ValueError):
    """A state file that cannot be trusted; the message names the file and the problem."""


def _depth(text: str) -> int:
    """Deepest bracket nesting, outside strings (cheap, no recursion)."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_state_bytes(path: Path, max_bytes: int = MAX_STATE_BYTES) -> bytes | None:
    """The file's bytes; None when it does not exist; StateFileError when it is not a regular file,
    is a symlink, or is over ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise StateFileError(f"{path}: is a symlink; state files are read only from regular files") from None
        raise StateFileError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateFileError(f"{path}: not a regular file (mode {stat.filemode(st.st_mode)})")
        if st.st_size > max_bytes:
            raise StateFileError(f"{path}: {st.st_size} bytes, over the {max_bytes}-byte limit")
        chunks, got = [], 0
        while got <= max_bytes:
            chunk = os.read(fd, min(65536, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > max_bytes:
            raise StateFileError(f"{path}: over the {max_bytes}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_state_json(path: Path, max_bytes: int = MAX_STATE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parsed JSON from ``path``; None when it does not exist; StateFileError otherwise (see above)."""
    raw = read_state_bytes(path, max_bytes)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StateFileError(f"{path}: not UTF-8") from None
    if _depth(text) > max_depth:
        raise StateFileError(f"{path}: nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StateFileError(f"{path}: not JSON: {str(exc)[:80]}") from None
