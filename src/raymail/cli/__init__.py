"""The ``raymail`` command: one typer sub-app per noun, each thin (parse, call, print).

``app`` is created on first access (module ``__getattr__``), so the console script can hand
``raymail returns classify`` to cli/fast.py before typer, rich or pydantic is imported.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

_app: typer.Typer | None = None
_registered = False


def _make_app() -> typer.Typer:
    global _app
    if _app is None:
        import typer

        _app = typer.Typer(
            name="raymail",
            help="Send very large email campaigns from a Ray cluster.",
            no_args_is_help=True,
            pretty_exceptions_enable=False,
        )
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _make_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register() -> None:
    """Attach the sub-apps (once); imported lazily so `raymail --help` stays fast."""
    global _registered
    if not _registered:
        from raymail.cli import commands

        commands.register(_make_app())
        _registered = True


def main() -> None:
    """Console-script entry point (``returns classify`` skips typer: see cli/fast.py)."""
    from raymail.cli.fast import try_classify

    code = try_classify(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    _register()
    _make_app()()
