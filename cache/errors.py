"""The cache's own errors: a cache made for something else, or not (yet) a whole cache."""
from core.errors import WorkflowError


class CacheMismatch(WorkflowError):
    """A cache exists but was made for another configuration, layer or input set."""


class CacheIncomplete(WorkflowError):
    """A cache is missing, half-written or unreadable."""
