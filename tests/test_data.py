import gzip
import shutil

import numpy as np
import pytest
import torch

from sharpgaps.data import readers, sources, subsets


@pytest.mark.parametrize("dataset,layout", [("mnist", "idx"), ("cifar10", "npz"), ("sst2", "glue_tsv")])
def test_verify_finds_checksummed_layout(data_dir, dataset, layout):
    found_layout, files = sources.verify(dataset, data_dir)
    assert found_layout.name == layout
    assert set(files) == {f.relpath for f in found_layout.files}


def test_mnist_reader(data_dir):
    _, files = sources.verify("mnist", data_dir)
    d = readers.read_mnist(files)
    assert d["x_train"].shape == (60000, 1, 28, 28) and d["x_test"].shape == (10000, 1, 28, 28)
    assert d["x_train"].dtype == np.uint8
    assert d["y_train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # documented first labels
    assert d["y_test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert set(np.unique(d["y_train"])) == set(range(10))


def test_idx_reader_accepts_uncompressed(tmp_path, data_dir):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((data_dir / "mnist/t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert readers.read_idx(raw)[:3].tolist() == [7, 2, 1]
    # the checksum of an uncompressed file equals the one of the .gz content
    f = next(f for f in sources.DATASETS["mnist"][0].files if f.relpath.endswith("t10k-labels-idx1-ubyte"))
    assert sources.file_digest(raw, f.algo, f.gunzip) == f.digest


def test_cifar_npz_reader(data_dir):
    _, files = sources.verify("cifar10", data_dir)
    d = readers.read_cifar_npz(files)
    assert d["x_train"].shape == (10000, 3, 32, 32) and d["x_test"].shape == (10000, 3, 32, 32)
    assert np.bincount(d["y_train"]).tolist() == [1000] * 10
    # channel order: the documented per-channel test mean (0.4941, 0.4851, 0.4504)
    mean = d["x_test"].mean(axis=(0, 2, 3)) / 255
    assert np.allclose(mean, [0.4941, 0.4851, 0.4504], atol=2e-4)


def test_cifar_pickle_reader_roundtrip(tmp_path):
    """The official python-pickle layout: rows are channel-major 3072-byte images."""
    import pickle

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as fh:
        pickle.dump({b"data": x.reshape(4, -1), b"labels": [3, 1, 4, 1]}, fh)
    xr, yr = readers.read_cifar_batch(path)
    assert np.array_equal(xr, x) and yr.tolist() == [3, 1, 4, 1]


def test_sst2_reader(data_dir):
    _, files = sources.verify("sst2", data_dir)
    d = readers.read_sst2(files)
    assert len(d["x_train"]) == 67349 and len(d["x_test"]) == 872
    assert np.bincount(d["y_train"]).tolist() == [29780, 37569]
    assert np.bincount(d["y_test"]).tolist() == [428, 444]
    assert d["x_test"][0] == d["x_test"][0].strip()


def _copy_dataset(data_dir, tmp_path, name):
    shutil.copytree(data_dir / name, tmp_path / name)
    return tmp_path


def test_corrupted_file_is_named(data_dir, tmp_path):
    root = _copy_dataset(data_dir, tmp_path, "sst2")
    with open(root / "sst2/dev.tsv", "a") as fh:
        fh.write("tampered\t1\n")
    with pytest.raises(sources.DataError) as err:
        sources.acquire("sst2", root)
    msg = str(err.value)
    assert "dev.tsv" in msg and "54a9c12c77e402fc" in msg and "delete it" in msg


def test_missing_file_names_path_and_checksum(data_dir, tmp_path, monkeypatch):
    root = _copy_dataset(data_dir, tmp_path, "mnist")
    (root / "mnist/t10k-images-idx3-ubyte.gz").unlink()

    def offline(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "_fetch", offline)
    with pytest.raises(sources.DataError) as err:
        sources.acquire("mnist", root)
    msg = str(err.value)
    assert str(root / "mnist/t10k-images-idx3-ubyte.gz") in msg
    assert "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7" in msg
    assert "download failed" in msg and "network unreachable" in msg
    assert "train-images" not in msg  # only what is missing is listed


def test_download_path_verifies_before_landing(data_dir, tmp_path, monkeypatch):
    """The download path fetches, checks and moves files into place (served here from the local copy)."""
    (tmp_path / "mnist").mkdir()
    monkeypatch.setattr(sources, "_fetch", lambda url, timeout: (data_dir / "mnist" / url.rsplit("/", 1)[1]).read_bytes())
    layout, files = sources.acquire("mnist", tmp_path)
    assert layout.name == "idx" and all(p.parent == tmp_path / "mnist" for p in files.values())


def test_data_dir_env_overrides_config(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(tmp_path))
    assert sources.resolve_data_dir("/somewhere/else") == tmp_path.resolve()


def test_stratified_draw_is_proportional_and_seeded():
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    a = subsets.stratified_indices(labels, 100, seed=3)
    assert np.bincount(labels[a]).tolist() == [70, 20, 10]
    assert len(set(a.tolist())) == 100
    assert np.array_equal(a, subsets.stratified_indices(labels, 100, seed=3))
    assert not np.array_equal(a, subsets.stratified_indices(labels, 100, seed=4))


def test_mnist_subset(data_dir):
    s = subsets.make_subset("mnist", data_dir, n_train=5000, seed=0)
    assert s["x_train"].shape == (5000, 1, 28, 28) and s["x_test"].shape == (10000, 1, 28, 28)
    assert 0.0 <= float(s["x_train"].min()) and float(s["x_train"].max()) <= 1.0
    assert len(set(s["meta"]["train_indices"])) == 5000
    counts = torch.bincount(s["y_train"]).tolist()
    assert sum(counts) == 5000 and min(counts) > 400  # stratified, every class present
    assert "mnist/train-images-idx3-ubyte" in s["meta"]["source_checksums"]


def test_cifar_subset_standardised_with_train_stats(data_dir):
    s = subsets.make_subset("cifar10", data_dir, n_train=5000, seed=0, test_cap=1000)
    assert torch.bincount(s["y_train"]).tolist() == [500] * 10
    m = s["x_train"].mean(dim=(0, 2, 3))
    sd = s["x_train"].std(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=1e-4) and torch.allclose(sd, torch.ones(3), atol=1e-4)
    assert torch.bincount(s["y_test"]).tolist() == [100] * 10


def test_sst2_subset_vocab_from_train_only(data_dir):
    s = subsets.make_subset("sst2", data_dir, n_train=5000, seed=0, max_len=20)
    meta = s["meta"]
    assert s["x_train"].shape == (5000, 20) and s["x_test"].shape == (872, 20)
    assert meta["vocab"][:2] == ["<pad>", "<unk>"] and meta["vocab_size"] == len(meta["vocab"])
    assert int(s["x_train"].max()) < meta["vocab_size"]
    assert (s["x_train"][:, 0] != subsets.PAD).all()  # no all-padding sentence
    # words seen only in dev map to <unk>
    assert (s["x_test"] == subsets.UNK).any()
