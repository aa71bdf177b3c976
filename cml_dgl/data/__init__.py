"""Data: raw-log readers, event processing, splits, and the on-disk dataset format (no DGL here)."""

from cml_dgl.data.dataset import FORMAT_VERSION, Dataset, load_dataset, write_dataset

__all__ = ["FORMAT_VERSION", "Dataset", "load_dataset", "write_dataset"]
