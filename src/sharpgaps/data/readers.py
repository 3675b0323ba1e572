"""Readers for the raw formats (no torchvision): MNIST IDX, CIFAR-10 npz / python pickle, GLUE SST-2 TSV."""

from __future__ import annotations

import csv
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or .gz): big-endian magic (0, 0, dtype, ndim), then dims, then data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims).astype(data.dtype.newbyteorder("="), copy=True)


def read_mnist(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Images as uint8 (N, 1, 28, 28), labels as int64."""
    get = lambda stem: read_idx(files[f"mnist/{stem}"])  # noqa: E731
    return {
        "x_train": get("train-images-idx3-ubyte")[:, None],
        "y_train": get("train-labels-idx1-ubyte").astype(np.int64),
        "x_test": get("t10k-images-idx3-ubyte")[:, None],
        "y_test": get("t10k-labels-idx1-ubyte").astype(np.int64),
    }


def _nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def read_cifar_npz(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """The offline .npz layout: x uint8 (N, 32, 32, 3) HWC, y uint8 -> (N, 3, 32, 32), int64."""
    out = {}
    for split in ("train", "test"):
        with np.load(files[f"cifar10/{split}.npz"], allow_pickle=False) as z:
            out[f"x_{split}"] = _nhwc_to_nchw(z["x"])
            out[f"y_{split}"] = z["y"].astype(np.int64)
    return out


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official python-pickle batch: b'data' (N, 3072) channel-major rows, b'labels'."""
    with open(path, "rb") as fh:
        d = pickle.load(fh, encoding="bytes")  # noqa: S301 (checksum-verified official file)
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"], dtype=np.int64)


def read_cifar_pickle(files: dict[str, Path]) -> dict[str, np.ndarray]:
    base = "cifar10/cifar-10-batches-py/"
    parts = [read_cifar_batch(files[f"{base}data_batch_{i}"]) for i in range(1, 6)]
    x_test, y_test = read_cifar_batch(files[f"{base}test_batch"])
    return {
        "x_train": np.concatenate([p[0] for p in parts]),
        "y_train": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
    }


def read_sst2_tsv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """GLUE TSV with header 'sentence\\tlabel'; sentences are already lower-cased and PTB-tokenized."""
    sentences, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: expected header 'sentence<TAB>label', got {header}")
        for row in reader:
            sentences.append(row[0].strip())
            labels.append(int(row[1]))
    return sentences, np.asarray(labels, dtype=np.int64)


def read_sst2(files: dict[str, Path]) -> dict:
    s_train, y_train = read_sst2_tsv(files["sst2/train.tsv"])
    s_test, y_test = read_sst2_tsv(files["sst2/dev.tsv"])
    return {"x_train": s_train, "y_train": y_train, "x_test": s_test, "y_test": y_test}


READERS = {
    ("mnist", "idx"): read_mnist,
    ("cifar10", "npz"): read_cifar_npz,
    ("cifar10", "pickle"): read_cifar_pickle,
    ("sst2", "glue_tsv"): read_sst2,
}
