"""Data: real MNIST digit pools and the MNIST Multiset canvases built from them; COCO-format
and PASCAL VOC photographs."""

from glimpse.data.mnist_datamodule import MultisetMNISTDataModule
from glimpse.data.digits import load_digits
from glimpse.data.multiset_mnist import MultisetMNIST
from glimpse.data.photo_datamodule import CocoDataModule, VOCDataModule

__all__ = ["CocoDataModule", "MultisetMNIST", "MultisetMNISTDataModule", "VOCDataModule", "load_digits"]
