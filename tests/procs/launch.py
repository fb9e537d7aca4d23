"""Start the process tests' processes, wait for what they do, and always stop them.

Each process runs in a process group of its own, with its stdout and stderr in files of the
test's directory and no stdin. :meth:`Launcher.wait` is the one bounded wait loop: it returns
the condition's first truthy value, and fails the test with the processes' log tails when one
of them exits first or the time runs out. :meth:`Launcher.stop_all` (the ``launch`` fixture's
finaliser, so it runs however the test ends) sends SIGTERM to each process group, then SIGKILL
to what is left of it. :func:`read_json` and :func:`get_json` read what a process publishes (a
status file, an HTTP API) for the conditions, ``None`` while it is not there yet.

A process is not reaped until it is stopped (its exit is read with ``waitid(WNOWAIT)``): while
its leader is a zombie, its process group id cannot be given to another process, so the
signals to the group reach only what this test started.

The group is not a session of its own: with Linux's ``sched_autogroup`` each session is
scheduled as one, so processes in sessions of their own each get an equal CPU share against the
others, not the share they had in the test's session. Three trainer nodes started that way
merged too little to pass tests/test_node.py's first test (5 runs in 11 failed, 0 in 9 with a
process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest


class Proc:
    """One started process: its ``name``, ``pid``, and the files ``out`` and ``err`` its stdout
    and stderr go to (``None`` when the caller redirected them elsewhere)."""

    def __init__(self, name: str, popen: subprocess.Popen, out: Path | None, err: Path | None,
                 tail: Callable[[], str] | None, stacks: int | None):
        self.name, self.popen, self.out, self.err = name, popen, out, err
        self.pid = popen.pid
        self._tail, self.stacks = tail, stacks

    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def stdout(self) -> str:
        return _read(self.out)

    def stderr(self) -> str:
        return _read(self.err)

    def tail(self, chars: int = 4000) -> str:
        """The end of what the process wrote (and of its ``tail``), for failure messages."""
        text = "".join(f"--- {path.name}\n{_read(path)[-chars:]}\n" for path in (self.out, self.err)
                       if path is not None)
        return text + (self._tail()[-chars:] if self._tail is not None else "")

    def dump_stacks(self, timeout: float = 5.0) -> None:
        """Have a running process write its threads' stacks (its ``stacks`` signal) and wait,
        at most ``timeout`` s, until its output files grow."""
        if self.stacks is None or self.returncode() is not None:
            return
        size = self._written()
        os.kill(self.pid, self.stacks)
        deadline = time.monotonic() + timeout
        while self._written() == size and time.monotonic() < deadline:
            time.sleep(0.05)

    def _written(self) -> int:
        return sum(path.stat().st_size for path in (self.out, self.err)
                   if path is not None and path.exists())

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group), if it has not exited."""
        if self.returncode() is None:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the process group, SIGKILL to what is left after ``timeout`` s; the exit
        status. Idempotent."""
        if self.popen.returncode is None:
            if self.returncode() is None:
                _killpg(self.pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while self.returncode() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            _killpg(self.pid, signal.SIGKILL)  # the leader, or children it left behind
            self.popen.wait()
        return self.popen.returncode


class Launcher:
    """Starts processes with their output in ``directory`` and stops them all at the end."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], *, stdout: Any = "file", stderr: Any = "file",
              tail: Callable[[], str] | None = None, stacks: int | None = None,
              **popen_kwargs) -> Proc:
        """Start ``argv`` in a new process group; ``name`` names it in messages and its output
        files.

        Args:
            name: a short name, unique in the test (``<name>.out`` and ``<name>.err`` files).
            argv: the command line.
            stdout, stderr: ``"file"`` (the default) for ``<name>.out`` / ``<name>.err`` in the
                launcher's directory, or anything ``subprocess.Popen`` takes.
            tail: more to show of the process in failure messages (its status, or its output
                when that does not go to the files), after the end of its files.
            stacks: a signal that makes the process write its threads' stacks to its output
                (``faulthandler.register(signal.SIGUSR1, all_threads=True)``): sent before a
                timed-out wait shows the tails, so they say where the process hangs.
            popen_kwargs: passed to ``subprocess.Popen`` (``env``, ``cwd``; ``stdin`` is
                ``subprocess.DEVNULL`` unless given).
        """
        out = self.directory / f"{name}.out" if stdout == "file" else None
        err = self.directory / f"{name}.err" if stderr == "file" else None
        popen_kwargs = {"stdin": subprocess.DEVNULL, **popen_kwargs}
        with contextlib.ExitStack() as files:  # the child holds descriptors of its own
            sinks = [how if path is None else files.enter_context(open(path, "wb"))
                     for path, how in ((out, stdout), (err, stderr))]
            popen = subprocess.Popen(list(argv), stdout=sinks[0], stderr=sinks[1],
                                     process_group=0, **popen_kwargs)
        proc = Proc(name, popen, out, err, tail, stacks)
        self.procs.append(proc)
        return proc

    def wait(self, condition: Callable[[], Any], timeout: float, what: str, *,
             watch: Sequence[Proc] | None = None, interval: float = 0.05) -> Any:
        """Poll ``condition()`` until it is truthy; return that value.

        Args:
            condition: called every ``interval`` s (it may also sample or drain something).
            timeout: seconds before the test fails.
            what: what is waited for, for the failure message.
            watch: processes that must not exit meanwhile (default: all started ones).

        Fails the test, with the log tails, when a watched process exits before the condition
        holds or ``timeout`` s pass (then with those of every process when none is watched, and
        with the stacks of those started with ``stacks``).
        """
        watch = self.procs if watch is None else watch
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            for proc in watch:
                if (code := proc.returncode()) is not None:
                    pytest.fail(f"{proc.name} exited with {code} while waiting for {what}:\n"
                                f"{proc.tail()}")
            if time.monotonic() > deadline:
                shown = watch or self.procs
                for proc in shown:
                    proc.dump_stacks()
                tails = "".join(f"\n[{p.name}]\n{p.tail(2000 if p.stacks is None else 12000)}"
                                for p in shown)
                pytest.fail(f"not within {timeout} s: {what}{tails}")
            time.sleep(interval)

    def wait_exit(self, proc: Proc, timeout: float) -> int:
        """Wait until ``proc`` exits (failing the test after ``timeout`` s); its exit status."""
        self.wait(lambda: proc.returncode() is not None, timeout, f"{proc.name} to exit",
                  watch=())
        return proc.returncode()

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every process started (see :meth:`Proc.stop`), the last started first."""
        for proc in reversed(self.procs):
            proc.stop(timeout)


def read_json(path: Path) -> Any:
    """The JSON document in the file at ``path``; ``None`` while it is missing or half written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def get_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON answer to ``GET url``; ``None`` while nothing answers it (refused, an error
    status, no answer within ``timeout`` s, not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _read(path: Path | None) -> str:
    try:
        return path.read_text(errors="replace") if path is not None else ""
    except FileNotFoundError:
        return ""

