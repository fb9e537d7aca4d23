"""What every command module shares: learnae's typed errors as a clean exit (status 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click


class Refused(click.ClickException):
    """A configuration or ledger problem the user can fix: the reason, exit status 2."""

    exit_code = 2


@contextmanager
def reasons() -> Iterator[None]:
    """Turn learnae's typed errors into a clean message and exit status 2."""
    from learnae.errors import LearnaeError

    try:
        yield
    except LearnaeError as exc:
        raise Refused(exc.reason) from None
