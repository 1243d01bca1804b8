"""`make bench`: measured speed and memory of every stage against the recipe it replaces."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
