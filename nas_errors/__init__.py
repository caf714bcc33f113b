"""The project's one error tree: every error a user can act upon derives from ``NasError``.

The CLI catches ``NasError`` once (the message, exit status 2, no traceback unless ``--debug``) and the
API maps each branch to one HTTP status. Any other exception is a bug and keeps its traceback.
This package depends on nothing, so every layer (``search_spaces`` included) may raise these.
"""

from __future__ import annotations


class NasError(Exception):
    """Root: a request the project refuses or cannot carry out; the message says what and why."""


class UserError(NasError, ValueError):
    """Bad input: a config, dataset, architecture, path or request value (CLI exit 2, HTTP 422)."""


class NotFound(NasError, KeyError):
    """A named thing that does not exist: a search, an episode, a file (HTTP 404)."""

    def __str__(self) -> str:
        # KeyError would print the message quoted, as if it were the missing key.
        return str(self.args[0]) if self.args else ""


class Conflict(NasError):
    """The current state forbids the action: a taken name, a finished episode, a live runner (HTTP 409)."""


class LaunchError(NasError):
    """A runner or trial could not be started: no job server, no interpreter, no resources (HTTP 503)."""


class Unavailable(NasError):
    """A service the project needs (the database, the cluster) did not answer in time (HTTP 503)."""


class TrainingError(NasError):
    """A training run failed in a way its config caused, e.g. a non-finite loss."""
