"""Console output for people: colour, tables and progress. The only module that imports rich."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped output: never cut table cells to 80 columns
    out.width = 250

_LINE_STYLES = {"+": "green", "-": "red", "~": "yellow"}


def write(text: str, *, stderr: bool = False) -> None:
    """Print text as is (no markup), keeping a trailing newline policy simple."""
    (err if stderr else out).print(Text(text.rstrip("\n")))


def write_diff(text: str) -> None:
    """Print a plan, colouring `+`, `-` and `~` lines on a terminal."""
    for line in text.rstrip("\n").split("\n"):
        stripped = line.lstrip()
        style = _LINE_STYLES.get(stripped[:1], "") if stripped[1:2] == " " else ""
        if line.startswith("Plan:"):
            style = "bold"
        out.print(Text(line, style=style))


def error(message: str) -> None:
    err.print(Text("error: ", style="bold red") + Text(message))


def warn(message: str) -> None:
    err.print(Text("warning: ", style="bold yellow") + Text(message))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str = "") -> None:
    t = Table(title=title or None, box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


@contextmanager
def progress(description: str, total: int) -> Iterator[Any]:
    """A progress bar on a terminal (silent otherwise); yields a function to advance it."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
