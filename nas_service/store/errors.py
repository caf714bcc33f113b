"""Errors of the episode store, as branches of the project's error tree (``nas_errors``).

``StoreError`` is a value the store refuses; its subclasses also belong to the tree's branches
(``NotFound``, ``Conflict``, ``Unavailable``), so the CLI and the API handle them by branch while
callers of the store may still catch everything it refuses as ``StoreError``.
"""

import nas_errors


class StoreError(nas_errors.UserError):
    """A request the store refuses: a bad value, or (in the subclasses) a missing row or a conflict."""


class NotFound(nas_errors.NotFound, StoreError):
    """A search or episode that does not exist."""


class SearchNotFound(NotFound):
    """No search with the given id or name."""


class EpisodeNotFound(NotFound):
    """No episode with the given number in the search."""


class Conflict(nas_errors.Conflict, StoreError):
    """A write that clashes with what is stored: a taken name, a repeated checkpoint, a finished episode."""


class LeaseLost(Conflict):
    """A runner's write refused: its lease on the search was taken over (it had expired) or released."""


class StoreUnavailable(nas_errors.Unavailable, StoreError):
    """The database did not answer (down, unreachable, refusing the connection)."""
