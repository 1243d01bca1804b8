"""Stage 1: image discovery and decoding, the frozen InceptionV3 backbone, and feature extraction."""
import core  # noqa: F401  (first: the quiet TensorFlow start-up, core/quiet.py)
