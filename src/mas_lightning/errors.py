"""The one exception type that means "the configuration is wrong" (the CLI turns it into exit code 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is accepted."""
