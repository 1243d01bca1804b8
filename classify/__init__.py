"""Stage 2: the dense head and a scikit-learn baseline, trained on cached features."""
import core  # noqa: F401  (first: the quiet TensorFlow start-up, core/quiet.py)
