"""Stage 1: image discovery and decoding, the frozen InceptionV3 backbone, and feature extraction."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out of the progress bars
