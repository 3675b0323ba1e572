"""Atomic, verifiable files: a reader never sees a half-written file, and never trusts an altered one.

Writes go to a temp file in the same directory and are renamed into place. Torch files carry a
content digest (key ``_sha256``) and Parquet tables carry page checksums; the loaders here verify
them and raise CorruptFileError naming the file, so corruption ends a job instead of becoming numbers.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

DIGEST_KEY = "_sha256"


class CorruptFileError(RuntimeError):
    """A file that exists but fails its checksum or format check."""


class OutputWriteError(OSError):
    """Writing an output failed (unwritable directory, full disk); the message names the path."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return self.strerror


def _corrupt(path, why: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: {why}. The file is truncated, altered or not written by this pipeline: "
                            f"delete it and rerun (Snakemake rebuilds it; add --rerun-incomplete if asked).")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG}


def write_error(exc: OSError, path) -> OSError:
    """The one-line OutputWriteError for a full disk or an unwritable place; other errors unchanged."""
    if isinstance(exc, OutputWriteError) or exc.errno not in _WRITE_ERRNOS:
        return exc
    hint = "the disk is full: free space" if exc.errno == errno.ENOSPC else "make the directory writable"
    return OutputWriteError(exc.errno, f"cannot write {path} ({os.strerror(exc.errno)}): {hint}, then rerun; "
                                       f"no partial file was left")


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Every save_* serialises in memory first, so a failed write is a plain OSError from here
    (torch and pyarrow would otherwise turn ENOSPC into their own, path-less errors)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def _feed(h, obj) -> None:
    """Hash a nested structure of tensors, arrays and plain values (order-sensitive, type-tagged)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype}{a.shape}".encode())
        h.update(a.view(np.uint8) if a.dtype != object else repr(a.tolist()).encode())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def object_digest(obj) -> str:
    """sha256 of a nested structure of tensors, arrays and plain values (the ``_sha256`` key of torch files)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def save_torch(obj: dict, path: str | os.PathLike) -> None:
    """Save a dict with its content digest; load it back with :func:`load_torch`."""
    if not isinstance(obj, dict):
        raise TypeError("save_torch stores dicts (the digest travels as one of their keys)")
    obj = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    obj[DIGEST_KEY] = object_digest(obj)
    # To a buffer, not a path: torch.save names the zip's records after a *path*, and the temp
    # name is random, so equal objects would otherwise give different bytes.
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(buf.getvalue(), path)


def load_torch(path: str | os.PathLike) -> dict:
    """Load a file written by :func:`save_torch`; raise CorruptFileError if it fails its digest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (was the step that writes it run?)")
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, pickle/unicode errors, EOFError... for bad bytes
        raise _corrupt(path, f"unreadable as a torch file ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, dict) or DIGEST_KEY not in obj:
        raise _corrupt(path, "no content digest")
    want = obj.pop(DIGEST_KEY)
    if object_digest(obj) != want:
        raise _corrupt(path, "content digest mismatch")
    return obj


def load_recomputable(path: str | os.PathLike, what: str, log=sys.stderr) -> dict | None:
    """A file that only saves work (resume state, cache): None if absent or corrupt (with a warning),
    so the caller recomputes instead of trusting bad bytes."""
    if not Path(path).exists():
        return None
    try:
        return load_torch(path)
    except CorruptFileError as exc:
        print(f"{what}: corrupt file ignored, recomputing: {exc}", file=log)
        return None


def save_json(obj: Any, path: str | os.PathLike) -> None:
    save_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def save_text(text: str, path: str | os.PathLike) -> None:
    write_bytes(text.encode(), path)


def save_frame(df, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as CSV or Parquet, chosen by suffix."""
    if Path(path).suffix == ".parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, write_page_checksum=True)
        write_bytes(buf.getvalue(), path)
    else:
        save_text(df.to_csv(index=False), path)


def read_frame(path: str | os.PathLike):
    """Read a Parquet table written by :func:`save_frame`, verifying its page checksums."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such table (was the step that writes it run?)")
    try:
        return pd.read_parquet(path, page_checksum_verification=True)
    except Exception as exc:  # pyarrow raises OSError/ArrowInvalid, pandas JSON/Unicode errors, ...
        raise _corrupt(path, f"unreadable as a Parquet table ({type(exc).__name__}: {str(exc)[:120]})") from None
