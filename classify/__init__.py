"""Stage 2: the dense head and a scikit-learn baseline, trained on cached features."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
