"""`python -m raymail.cli`: the same as the `raymail` command."""

from raymail.cli import main

main()
