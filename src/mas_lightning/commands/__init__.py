"""The command-line commands: ``fit``, ``central``, ``compare`` and ``data`` (each a typed function)."""
