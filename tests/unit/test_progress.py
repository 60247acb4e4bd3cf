"""Progress bars show on a terminal only, and never with --quiet."""

from __future__ import annotations

import io

import pytest

from metaguide import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_none_in_a_pipe_none_when_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress.iterate([1, 2, 3], "sending listings")) == [1, 2, 3]
    assert "sending listings" in terminal.getvalue()

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    assert list(progress.iterate(range(3), "sending listings")) == [0, 1, 2]
    assert pipe.getvalue() == ""

    quiet_terminal = Terminal()
    monkeypatch.setattr("sys.stderr", quiet_terminal)
    progress.quiet()
    try:
        assert list(progress.iterate([1], "sending listings")) == [1]
    finally:
        progress.quiet(False)
    assert quiet_terminal.getvalue() == ""
