"""The feature cache: the HDF5 contract between stages 1, 2 and 3 (layout: README, "The cache file").

format.py   name, version, split codes, chunking, identity attributes
writer.py   the resumable writer and its background commits
reader.py   open_cache, FeatureCache, cache_state, stale_reason (what changed, in one line)
order.py    the shuffled, chunk-aligned training order              shards.py  sharded caches (Ray) and their front file
integrity.py  checksums (Fletcher32, checksummed metadata, the attributes' seal) and damage as one clean error
checks.py   what the checksums catch and cost, measured (damage_scan, checksum_cost)
"""
from .errors import CacheIncomplete, CacheMismatch
from .integrity import CacheCorrupt
from .format import FORMAT, FORMAT_VERSION, SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL, fingerprint, partial_path
from .order import epoch_windows
from .reader import FeatureCache, cache_state, open_cache, stale_reason
from .writer import BackgroundCommits, CacheWriter

__all__ = ["CacheCorrupt", "CacheIncomplete", "CacheMismatch", "FORMAT", "FORMAT_VERSION", "SPLIT_NONE",
           "SPLIT_TRAIN", "SPLIT_VAL", "BackgroundCommits", "CacheWriter", "FeatureCache", "cache_state", "epoch_windows",
           "fingerprint", "open_cache", "partial_path", "stale_reason"]
