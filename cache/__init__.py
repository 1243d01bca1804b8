"""The feature cache: the HDF5 contract between stages, and the errors every stage raises."""
from .errors import CacheIncomplete, CacheMismatch, WorkflowError, cli
from .store import (FORMAT, FORMAT_VERSION, SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL, BackgroundCommits, CacheWriter,
                    FeatureCache, cache_state, epoch_windows, fingerprint, open_cache, partial_path)

__all__ = ["CacheIncomplete", "CacheMismatch", "WorkflowError", "cli", "FORMAT", "FORMAT_VERSION", "SPLIT_NONE",
           "SPLIT_TRAIN", "SPLIT_VAL", "BackgroundCommits", "CacheWriter", "FeatureCache", "cache_state", "epoch_windows",
           "fingerprint", "open_cache", "partial_path"]
