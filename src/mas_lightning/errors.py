"""The exceptions that the command line turns into one line on stderr instead of a traceback.

- :class:`ConfigError`: the configuration is wrong (exit code 2): the message names the key, the value and
  what would be accepted.
- :class:`RunError`: the run cannot go on (exit code 1): a diverging loss, a full disk, a damaged
  checkpoint... The message says what happened, where (stage, round, file) and what to do next.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is accepted."""

    exit_code = 2


class RunError(RuntimeError):
    """A run stopped for a reason the user must act on; the message names where and what to do."""

    exit_code = 1
