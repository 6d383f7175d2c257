"""The evaluator CNN: a small image classifier whose penultimate layer is genlab's feature space.

It plays the role InceptionV3 plays for natural images (Heusel et al. 2017 use Inception's pool3,
the input of its logits layer): the 128-d input of the final linear layer serves FID / KID /
precision-recall / density-coverage, and its softmax serves IS and the class diagnostics.
For 28x28 MNIST it reaches ~99.5% test accuracy with ~0.2M parameters (see genlab/eval/weights).

Caveats: features of a classifier trained on one dataset only measure what that classifier finds
discriminative; numbers are comparable only between records with the same weights fingerprint.
Parameterised by the data shape (channels, resolution); adaptive average pooling to 2x2 keeps coarse
layout (where the strokes are) and makes the head independent of the resolution.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..registry import register


def _block(cin: int, cout: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return layers


@register("net", "mnist-classifier", role="classifier", data=("image",))
class EvaluatorCNN(nn.Module):
    """conv32 -> pool -> conv64 x2 -> pool -> conv128 -> avg pool to 2x2 -> fc(feature_dim) -> fc(classes).

    Inputs are float images in [0, 1] (n, C, H, W); they are centred inside the net so callers never
    have to know a normalisation constant."""

    def __init__(self, shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, width: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        channels = shape[0]
        self.shape, self.num_classes, self.feature_dim = tuple(shape), num_classes, feature_dim
        self.body = nn.Sequential(
            *_block(channels, width, 1), nn.MaxPool2d(2),
            *_block(width, 2 * width, 2), nn.MaxPool2d(2),
            *_block(2 * width, 4 * width, 1), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.penultimate = nn.Sequential(nn.Linear(16 * width, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.penultimate(self.body((x - 0.5) / 0.5))
        return h, self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())

