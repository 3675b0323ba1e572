"""Unit-level fault injection for every file the pipeline writes and reads back (sharpgaps.core.atomic).

Corrupt bytes must raise CorruptFileError naming the file; a failed write (full disk, read-only or
unwritable directory) must raise OutputWriteError naming the path and leave no file behind.
"""

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sharpgaps.core import atomic
from sharpgaps.core.atomic import CorruptFileError, OutputWriteError, load_torch, read_frame, save_frame, save_torch


def _payload():
    g = torch.Generator().manual_seed(0)
    return {"theta": torch.randn(5000, generator=g), "gaps": torch.randn(2, 4, 5000, generator=g),
            "round": 7, "rows": [{"m": 1, "value": 0.25}], "names": ["w", "b"], "idx": np.arange(10)}


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()  # a new inode, as a real corruption of a copied file would be
    path.write_bytes(data)


def _flip(path: Path, at: float) -> None:
    b = bytearray(path.read_bytes())
    b[int(len(b) * at)] ^= 0x5A
    _rewrite(path, bytes(b))


def test_torch_roundtrip_is_verified_and_deterministic(tmp_path):
    save_torch(_payload(), tmp_path / "a.pt")
    save_torch(_payload(), tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    back = load_torch(tmp_path / "a.pt")
    assert torch.equal(back["gaps"], _payload()["gaps"]) and back["round"] == 7
    assert atomic.DIGEST_KEY not in back


@pytest.mark.parametrize("at", [0.3, 0.5, 0.7, 0.9])
def test_altered_tensor_bytes_are_detected(tmp_path, at):
    """torch.load itself accepts a flipped byte in tensor data and returns wrong numbers; the digest does not."""
    path = tmp_path / "ckpt.pt"
    save_torch(_payload(), path)
    _flip(path, at)
    with pytest.raises(CorruptFileError, match=str(path)):
        load_torch(path)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.99])
def test_truncated_torch_file_is_detected(tmp_path, keep):
    path = tmp_path / "state.pt"
    save_torch(_payload(), path)
    _rewrite(path, path.read_bytes()[: int(path.stat().st_size * keep)])
    with pytest.raises(CorruptFileError, match=f"{path}.*delete it and rerun"):
        load_torch(path)


def test_foreign_torch_file_is_rejected(tmp_path):
    torch.save({"theta": torch.zeros(3)}, tmp_path / "x.pt")  # no digest: not written by the pipeline
    with pytest.raises(CorruptFileError, match="no content digest"):
        load_torch(tmp_path / "x.pt")


def _table():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"metric": ["removal"] * 3000, "m": rng.integers(1, 30, 3000), "value": rng.random(3000)})


@pytest.mark.parametrize("at", np.linspace(0.05, 0.95, 19).round(2).tolist())
def test_altered_or_truncated_table_never_reads_as_different_numbers(tmp_path, at):
    """Page checksums + format checks: a flipped byte either fails, naming the file, or leaves the
    numbers intact (metadata that no reader uses); it never yields different numbers."""
    path = tmp_path / "geometry.parquet"
    save_frame(_table(), path)
    _flip(path, at)
    try:
        assert read_frame(path).equals(_table())
    except CorruptFileError as exc:
        assert str(path) in str(exc)
    _rewrite(path, path.read_bytes()[: int(path.stat().st_size * at)])
    with pytest.raises(CorruptFileError, match=str(path)):
        read_frame(path)


def _no_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_injected_write_error_names_path_and_leaves_nothing(tmp_path, monkeypatch, err):
    def fail(*_a, **_k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(atomic.os, "replace", fail)  # the data was written; publishing it fails
    target = tmp_path / "out" / "ckpt.pt"
    with pytest.raises(OutputWriteError, match=f"cannot write {target}"):
        save_torch(_payload(), target)
    assert _no_leftovers(target.parent) == []


@pytest.fixture
def tiny_mount(tmp_path):
    """A 64 KiB tmpfs (root only); yields a mounter and unmounts what it mounted."""
    mounted = []

    def mount(opts: str) -> Path:
        where = tmp_path / f"mnt{uuid.uuid4().hex[:6]}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64k,{opts}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected-error test covers it")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_full_disk_names_path_and_leaves_no_half_file(tiny_mount):
    disk = tiny_mount("rw")
    with pytest.raises(OutputWriteError, match=f"cannot write {disk / 'big.pt'}.*disk is full"):
        save_torch(_payload(), disk / "big.pt")  # ~200 KB into 64 KiB
    assert _no_leftovers(disk) == []
    save_torch({"small": torch.zeros(10)}, disk / "small.pt")  # the space was given back
    assert load_torch(disk / "small.pt")["small"].shape == (10,)


def test_read_only_output_dir_names_path(tiny_mount):
    disk = tiny_mount("ro")
    for save, obj, name in [(save_torch, _payload(), "x.pt"), (save_frame, _table(), "t.parquet")]:
        with pytest.raises(OutputWriteError, match=f"cannot write {disk / name}.*writable"):
            save(obj, disk / name)
    with pytest.raises(OutputWriteError, match="cannot write"):
        save_torch(_payload(), disk / "sub" / "y.pt")  # even the directory cannot be made


def test_cli_job_on_read_only_output_fails_cleanly(tiny_mount, data_dir):
    """A whole pipeline step: exit code 2, one line naming the path, no traceback, no file."""
    disk = tiny_mount("ro")
    proc = subprocess.run([sys.executable, "-m", "sharpgaps", "subset", "--dataset", "mnist", "--data-dir",
                           str(data_dir), "--n-train", "100", "--seed", "0", "--out", str(disk / "subset.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert f"error: cannot write {disk / 'subset.pt'}" in proc.stderr and "Traceback" not in proc.stderr
    assert _no_leftovers(disk) == []


def test_publishing_checkpoints_onto_a_full_disk_fails_cleanly(tiny_mount, tmp_path):
    """The train step's last move (work dir -> declared outputs) on a full disk: one error naming
    the output dir, and no half-published checkpoint directory or temp file."""
    from sharpgaps.pipeline.jobs import publish_run

    work = tmp_path / "work"
    save_torch(_payload(), work / "ckpt" / "r000001.pt")  # ~200 KB: cannot fit in 64 KiB
    for name in ("metrics.csv", "rounds.csv"):
        save_frame(_table().head(3), work / name)
    out = tiny_mount("rw") / "run"
    with pytest.raises(OutputWriteError, match=f"cannot write {out} .*disk is full"):
        publish_run(work, out, [work / "ckpt" / "r000001.pt"], {"round": 1})
    assert _no_leftovers(out) == []


def test_recomputable_files_fall_back_to_recomputing(tmp_path):
    """Resume states and caches only save work: absent or corrupt -> None (recompute), with a warning."""
    import io

    from sharpgaps.core.atomic import load_recomputable

    path, log = tmp_path / "state.pt", io.StringIO()
    assert load_recomputable(path, "resume state", log) is None
    save_torch(_payload(), path)
    assert load_recomputable(path, "resume state", log)["round"] == 7
    _flip(path, 0.5)
    assert load_recomputable(path, "resume state", log) is None
    assert f"resume state: corrupt file ignored, recomputing: {path}" in log.getvalue()
