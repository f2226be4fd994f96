"""The bottom layer: the types every other package shares (``Problem``), the I/O helpers, the config field helper."""
