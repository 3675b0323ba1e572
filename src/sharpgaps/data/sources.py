"""Raw data files: where they live, their checked-in checksums, verification and acquisition.

Checksums are of the *content* a reader consumes, so that equivalent containers pass:
MNIST is checked after gunzip (the cached .gz files are not byte-identical to the historical
ones), SST-2 after extraction from the GLUE zip. Nothing here runs at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

ENV_DATA_DIR = "SHARPGAPS_DATA_DIR"


class DataError(RuntimeError):
    """Raised with a message that names each bad file and how to fix it."""


@dataclass(frozen=True)
class RawFile:
    relpath: str  # relative to the data dir
    digest: str  # hex digest of the content (see ``algo`` and ``gunzip``)
    algo: str = "sha256"
    gunzip: bool = False  # digest is of the uncompressed bytes; plain or .gz file accepted


@dataclass(frozen=True)
class Layout:
    """One on-disk layout of a dataset (e.g. CIFAR-10 as .npz or as official pickle batches)."""

    name: str
    files: tuple[RawFile, ...]
    # Official download: (url, archive member -> relpath); None when there is none.
    url: str | None = None
    url_digest: tuple[str, str] | None = None  # (algo, hex) of the downloaded archive
    members: dict[str, str] = field(default_factory=dict)


def _mnist(name: str, sha: str) -> RawFile:
    return RawFile(f"mnist/{name}", sha, gunzip=True)


DATASETS: dict[str, tuple[Layout, ...]] = {
    "mnist": (
        Layout(
            "idx",
            (
                _mnist("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                _mnist("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                _mnist("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                _mnist("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            ),
            # Per-file downloads (see MNIST_URL); verified after gunzip against the digests above.
            url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
    ),
    "cifar10": (
        Layout(
            "npz",
            (
                RawFile("cifar10/train.npz", "786d6ddbfbddba382c0e3f63c2de20951839e9afad246731be34eb864af4ec70"),
                RawFile("cifar10/test.npz", "f892c14ad369977dff609cbce6fc32e7094390de596992893599e93aa1627659"),
            ),
        ),
        Layout(
            "pickle",
            # md5s of the official python batches as published with the CIFAR-10 release
            # (also listed by torchvision); not exercised offline here.
            tuple(
                RawFile(f"cifar10/cifar-10-batches-py/{n}", h, algo="md5")
                for n, h in [
                    ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                    ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                    ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                    ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                    ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                    ("test_batch", "40351d587109b95175f43aff81a1287e"),
                ]
            ),
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            url_digest=("md5", "c58f30108f718f92721af3b95e74349a"),
        ),
    ),
    "sst2": (
        Layout(
            "glue_tsv",
            (
                RawFile("sst2/train.tsv", "5c47819a1d04cfabc7afcc79a919c97b0b367101ad42d3ff148d67bf501384c2"),
                RawFile("sst2/dev.tsv", "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"),
            ),
            url="https://dl.fbaipublicfiles.com/glue/data/SST-2.zip",
            members={"SST-2/train.tsv": "sst2/train.tsv", "SST-2/dev.tsv": "sst2/dev.tsv"},
        ),
    ),
}


def resolve_data_dir(configured: str | os.PathLike | None) -> Path:
    """The environment variable wins over the config key (so CI and clusters can redirect)."""
    value = os.environ.get(ENV_DATA_DIR) or configured
    if not value:
        raise DataError(f"No data directory: set config key 'data_dir' or environment variable {ENV_DATA_DIR}.")
    return Path(value).expanduser().resolve()


def _locate(data_dir: Path, f: RawFile) -> Path | None:
    """Path of the file on disk; for gunzip-checked files either the .gz or the raw file."""
    candidates = [data_dir / f.relpath]
    if f.gunzip:
        candidates.insert(0, data_dir / (f.relpath + ".gz"))
    return next((p for p in candidates if p.is_file()), None)


def file_digest(path: Path, algo: str = "sha256", gunzip: bool = False) -> str:
    """Hex digest of a raw file's bytes (after gunzip for a .gz when ``gunzip``), as checked in above."""
    h = hashlib.new(algo)
    opener = gzip.open if gunzip and path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(data_dir: Path, f: RawFile) -> str:
    where = data_dir / (f.relpath + (".gz' (or uncompressed)" if f.gunzip else "'"))
    return f"  - '{where} expected {f.algo} {f.digest}{' of the uncompressed bytes' if f.gunzip else ''}"


def check_layout(data_dir: Path, layout: Layout) -> tuple[dict[str, Path], list[RawFile], list[str]]:
    """Return (found paths, missing files, checksum mismatch messages)."""
    found, missing, bad = {}, [], []
    for f in layout.files:
        path = _locate(data_dir, f)
        if path is None:
            missing.append(f)
            continue
        try:
            actual = file_digest(path, f.algo, f.gunzip)
        except (EOFError, OSError, zlib.error) as exc:  # truncated or garbled gzip stream
            actual = f"unreadable ({type(exc).__name__}: {exc})"
        if actual != f.digest:
            bad.append(
                f"  - '{path}': {f.algo} {actual} but expected {f.digest}. The file is corrupt or a "
                f"different release: delete it and acquire it again."
            )
        found[f.relpath] = path
    return found, missing, bad


def verify(dataset: str, data_dir: Path) -> tuple[Layout, dict[str, Path]]:
    """Find a complete, checksum-valid layout of ``dataset`` in ``data_dir`` or raise DataError."""
    if dataset not in DATASETS:
        raise DataError(f"Unknown dataset '{dataset}'; known: {sorted(DATASETS)}.")
    reports = []
    for layout in DATASETS[dataset]:
        found, missing, bad = check_layout(data_dir, layout)
        if bad:  # a present-but-corrupt file is always an error, never silently skipped
            raise DataError(f"Checksum mismatch for dataset '{dataset}':\n" + "\n".join(bad))
        if not missing:
            return layout, found
        reports.append((layout, missing))
    lines = [f"Dataset '{dataset}' is incomplete in data dir '{data_dir}'. Provide one of these layouts:"]
    for layout, missing in reports:
        lines.append(f" layout '{layout.name}', missing:")
        lines += [_describe(data_dir, f) for f in missing]
    lines.append(
        f"Put the files there (or point config key 'data_dir' / env {ENV_DATA_DIR} at a directory holding them)."
    )
    raise DataError("\n".join(lines))


def _fetch(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed official URLs)
        return resp.read()


def _download_layout(layout: Layout, data_dir: Path, timeout: float) -> None:
    if layout.url is None:
        raise DataError(f"layout '{layout.name}' has no official download")
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        staged = Path(tmp)
        if layout.name == "idx":  # MNIST: one .gz per file
            for f in layout.files:
                name = Path(f.relpath).name + ".gz"
                (staged / name).write_bytes(_fetch(layout.url + name, timeout))
            pairs = [(staged / (Path(f.relpath).name + ".gz"), f.relpath + ".gz") for f in layout.files]
        else:
            blob = _fetch(layout.url, timeout)
            if layout.url_digest:
                algo, want = layout.url_digest
                got = hashlib.new(algo, blob).hexdigest()
                if got != want:
                    raise DataError(f"downloaded {layout.url} has {algo} {got}, expected {want}")
            pairs = []
            if layout.url.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                    for member, rel in layout.members.items():
                        (staged / Path(rel).name).write_bytes(zf.read(member))
                        pairs.append((staged / Path(rel).name, rel))
            else:
                with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
                    tf.extractall(staged, filter="data")
                for f in layout.files:
                    rel = f.relpath.split("/", 1)[1]
                    pairs.append((staged / rel, f.relpath))
        # Verify everything before anything lands in the data dir.
        for src, rel in pairs:
            f = next(x for x in layout.files if rel.startswith(x.relpath))
            if file_digest(src, f.algo, f.gunzip) != f.digest:
                raise DataError(f"downloaded file for '{rel}' fails its checksum")
        for src, rel in pairs:
            dest = data_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), dest)


def acquire(dataset: str, data_dir: Path, download: bool = True, timeout: float = 30.0) -> tuple[Layout, dict[str, Path]]:
    """Verify ``dataset``; if incomplete, try each layout's official download, then verify again.

    On failure (e.g. no network) the error names every missing file, where to put it and its checksum.
    """
    try:
        return verify(dataset, data_dir)
    except DataError as first:
        if not download or "Checksum mismatch" in str(first):
            raise
        attempts = []
        for layout in DATASETS[dataset]:
            if layout.url is None:
                continue
            try:
                data_dir.mkdir(parents=True, exist_ok=True)
                _download_layout(layout, data_dir, timeout)
                return verify(dataset, data_dir)
            except (OSError, DataError, zipfile.BadZipFile, tarfile.TarError) as exc:
                attempts.append(f"  - {layout.url}: {exc}")
        raise DataError(f"{first}\nThe official download failed too:\n" + "\n".join(attempts)) from None
