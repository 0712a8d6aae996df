"""Demo data modules and models for trying out and benchmarking lightning_prune.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist``), read straight from its IDX files.
"""

from lightning_prune.demos.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNISTDataModule,
    RandomImageDataModule,
    read_idx,
)
from lightning_prune.demos.models import (
    ARCHITECTURES,
    BasicBlock,
    ImageClassifier,
    SmallResNet,
    build_model,
    resnet20,
)

__all__ = [
    "ARCHITECTURES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "BasicBlock",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "RandomImageDataModule",
    "SmallResNet",
    "build_model",
    "read_idx",
    "resnet20",
]
