"""Stage 3: the full network (backbone + trained head), fine-tuning, prediction and submission files."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
