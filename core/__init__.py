"""The ground floor, imported by every stage: errors and the CLI wrapper, atomic files, TF start-up.

Importing it installs the quiet TensorFlow start-up (core/quiet.py) and sets TF_CPP_MIN_LOG_LEVEL=2 unless set.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ info and warning chatter stays out of the progress bars

from . import quiet  # noqa: E402

quiet.install()

from .errors import WorkflowError, cli  # noqa: E402

__all__ = ["WorkflowError", "cli"]
