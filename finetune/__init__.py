"""Stage 3: the full network (backbone + trained head), fine-tuning, prediction and submission files."""
import core  # noqa: F401  (first: the quiet TensorFlow start-up, core/quiet.py)
