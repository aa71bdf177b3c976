import json

import numpy as np
import pytest

from cml_dgl.data.dataset import FORMAT_VERSION, load_dataset, write_dataset
from cml_dgl.errors import CmlError


def test_roundtrip_preserves_arrays_and_sorts_edges(tmp_path, tiny_dataset):
    out = write_dataset(tiny_dataset, tmp_path / "ds")
    ds = load_dataset(out)
    assert ds.behaviors == tiny_dataset.behaviors
    assert ds.train_counts() == tiny_dataset.train_counts()
    key = ds.train_behavior.astype(np.int64) * 10**8 + ds.train_user.astype(np.int64) * 10**4 + ds.train_item
    assert np.all(np.diff(key) > 0), "edges sorted by (behavior, user, item) and unique"
    np.testing.assert_array_equal(ds.test, tiny_dataset.test)
    np.testing.assert_array_equal(ds.item_ids, tiny_dataset.item_ids)
    assert ds.id_map_checksum() == tiny_dataset.id_map_checksum()
    u, i = ds.edges("buy")
    ref = tiny_dataset.train_behavior == 2
    assert sorted(zip(u, i)) == sorted(zip(tiny_dataset.train_user[ref], tiny_dataset.train_item[ref]))
    assert not list(tmp_path.glob(".ds.tmp-*")), "no temporary directory left behind"


def test_existing_outdir_refused_without_overwrite(tmp_path, tiny_dataset):
    write_dataset(tiny_dataset, tmp_path / "ds")
    with pytest.raises(CmlError, match="--overwrite"):
        write_dataset(tiny_dataset, tmp_path / "ds")
    write_dataset(tiny_dataset, tmp_path / "ds", overwrite=True)


def test_checksum_and_version_are_verified(tmp_path, tiny_dataset):
    out = write_dataset(tiny_dataset, tmp_path / "ds")
    arr = np.load(out / "train_item.npy")
    arr[0] = (arr[0] + 1) % tiny_dataset.n_items
    np.save(out / "train_item.npy", arr)
    with pytest.raises(CmlError, match="train_item.npy: checksum"):
        load_dataset(out)
    out2 = write_dataset(tiny_dataset, tmp_path / "ds2")
    meta = json.loads((out2 / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (out2 / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CmlError, match="format_version"):
        load_dataset(out2)
