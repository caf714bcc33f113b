"""Errors of the episode store: one base class, so callers can catch everything the store refuses."""


class StoreError(Exception):
    """A request the store cannot carry out: bad input, a conflict, or an unusable database."""


class NotFound(StoreError, KeyError):
    """A search or episode that does not exist (also a ``KeyError``, for lookups by key)."""

    def __str__(self) -> str:
        # KeyError would print the message quoted, as if it were the missing key.
        return str(self.args[0]) if self.args else ""


class SearchNotFound(NotFound):
    """No search with the given id or name."""


class EpisodeNotFound(NotFound):
    """No episode with the given number in the search."""


class Conflict(StoreError):
    """A write that clashes with what is stored: a taken name, a repeated checkpoint, a finished episode."""
