"""gentrain's built-in plugins.

Each sub-package or module here is an ordinary plugin, made known through an
entry point of the ``gentrain`` distribution (see ``pyproject.toml``), written
only against the public :mod:`engine` API, exactly as a third party would.
"""
