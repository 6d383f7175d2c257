"""Architectures only. Every net is parameterised by the data shape (resolution, channels) and
width; there is no per-resolution copy. Importing this package registers the nets."""
from . import autoencoder, classifier, cyclegan, dcgan, flow_models, mlp, pixelcnn, quantizer, resnet, vae  # noqa: F401  (registration side effects)
from .common import apply_spectral_norm, make_norm  # noqa: F401
