"""`make bench`: measured speed and memory of every stage against the recipe it replaces."""
import core  # noqa: F401  (first: the quiet TensorFlow start-up, core/quiet.py)
