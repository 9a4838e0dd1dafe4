"""Data: real MNIST digit pools and the MNIST Multiset canvases built from them."""

from glimpse.data.datamodule import MultisetMNISTDataModule
from glimpse.data.digits import load_digits
from glimpse.data.multiset_mnist import MultisetMNIST

__all__ = ["MultisetMNIST", "MultisetMNISTDataModule", "load_digits"]
