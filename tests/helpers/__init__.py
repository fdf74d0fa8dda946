"""Helpers shared by the test files (importable as ``helpers``: pytest puts ``tests/`` on
``sys.path`` because ``tests/conftest.py`` lives there).

Fixtures stay in ``conftest.py``; plain functions used by more than one test file live here.
"""

from helpers.wait import wait_for

__all__ = ["wait_for"]
