"""The sans-I/O core of ftpalg: bytes, addresses and `now` in; a list of actions out.

Nothing in this package performs I/O or imports an I/O library (asyncio, socket, os, pyroute2,
structlog): `tests/core/test_purity.py` walks the modules and enforces it.
"""
