"""Shared Click plumbing: CmlError -> one-line message and exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

import click

from cml_dgl.errors import CmlError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CmlError (or an interrupted write) into ``error: ...`` on stderr and exit code 2, and
    Ctrl-C into exit code 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CmlError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("error: out of memory (try a smaller chunk size or dataset)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C: outputs are atomic, so nothing half-written is left
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def threads_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--threads N`` to a command and set torch's threads before it runs (without the option:
    ``CML_THREADS``, read by :func:`cml_dgl.threads.set_threads`, which names it when malformed)."""
    from cml_dgl.threads import ENV, MAX_THREADS

    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int | None = None, **kwargs: Any) -> Any:
        from cml_dgl.threads import set_threads

        set_threads(threads)
        return fn(*args, **kwargs)

    return click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None, metavar="N",
                        help=f"CPU threads torch computes with [default: ${ENV}, else one per core]. On a "
                             "machine shared with busy processes use fewer (see docs/usage.md).")(wrapper)


class DeviceName(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether GPU N exists is checked when it is used)."""

    name = "auto|cpu|cuda|cuda:N"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from cml_dgl.train.config import check_device_name

        try:
            return check_device_name(str(value), "the device")
        except CmlError as e:
            self.fail(str(e), param, ctx)


class LazyChoice(click.Choice):
    """A :class:`click.Choice` whose values come from the library module that defines them
    (``source()``), read when first needed (parsing or help): starting ``cml`` for one command does
    not import torch for the other commands' lists."""

    def __init__(self, source: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._source, self._values = source, None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        if self._values is None:
            self._values = tuple(self._source())
        return self._values


def parse_int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name)
    if not out or any(k <= 0 for k in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return out
