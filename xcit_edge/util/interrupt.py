"""Ctrl-C and SIGTERM: exit promptly and non-zero, leave no temp files, leave outputs as they were.

Both signals raise `Interrupted` (a KeyboardInterrupt) in the main thread (except during an import, see
`_raise`), so every `atomic_dir` /
`atomic_file` unwinds through its cleanup and the old output stays in place. Python runs signal
handlers only between bytecodes, and a converter can sit in one C++ call for many seconds; so a
watchdog thread also hears the signal (through `signal.set_wakeup_fd`, written by the C-level
handler) and, if the process has not exited `GRACE_SECONDS` later (or on a second signal), removes
every temp path still registered here and ends the process with `os._exit`. Temps that even that
misses (SIGKILL, power loss) are hidden `.NAME.tmp-*` siblings that the next run into the same
output sweeps away under its lock (`fsutil.sweep_stale`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

GRACE_SECONDS = 3.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_temps: dict[Path, None] = {}
_temps_lock = threading.Lock()
_pending: int | None = None  # a signal that arrived during an import (see `_raise`)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def register(path: Path) -> None:
    """`path` (a temp file or directory) goes if the process is stopped before `unregister`."""
    with _temps_lock:
        _temps[Path(path)] = None


def unregister(path: Path) -> None:
    with _temps_lock:
        _temps.pop(Path(path), None)


def _remove_temps() -> None:
    with _temps_lock:
        paths = list(_temps)
        _temps.clear()
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _importing(frame) -> bool:
    """Whether the main thread is inside an import (importlib's frozen frames are on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise(signum: int, frame) -> None:
    # An exception raised while a native extension initializes kills the process (measured: SIGSEGV when
    # SIGTERM arrived during `import onnx`, stderr empty). Inside an import the signal is only recorded:
    # `check` raises it before anything is published, and the watchdog ends the process after the grace.
    global _pending
    if _importing(frame):
        _pending = signum
        return
    raise Interrupted(signum)


def check() -> None:
    """Raise `Interrupted` for a signal recorded during an import; called before an output is published
    (`fsutil.atomic_dir` / `atomic_file`), so the old output stays."""
    if _pending is not None:
        raise Interrupted(_pending)


def _watch(sock: socket.socket, stop: threading.Event, grace: float) -> None:
    """Wait for a signal byte; then give the main thread `grace` seconds to unwind on its own."""
    try:
        while True:  # the wakeup fd hears every signal with a Python handler: act on ours only
            first = sock.recv(1)
            if not first or stop.is_set():
                return
            if first[0] in _SIGNALS:
                break
        sock.settimeout(grace)
        with contextlib.suppress(TimeoutError, OSError):
            sock.recv(1)  # a second signal cuts the grace short
        if stop.is_set():
            return
    except OSError:  # the socket closed: the guarded block ended
        return
    _remove_temps()
    with contextlib.suppress(OSError):
        os.write(2, b"error: interrupted\n")
    os._exit(128 + first[0])


@contextlib.contextmanager
def guard(grace: float = GRACE_SECONDS) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise `Interrupted`, backed by the watchdog (main thread only;
    elsewhere, e.g. a worker thread, the block runs unguarded). Restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending
    _pending = None
    rsock, wsock = socket.socketpair()
    wsock.setblocking(False)
    old_handlers = {s: signal.signal(s, _raise) for s in _SIGNALS}
    old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(rsock, stop, grace), name="xcit-edge-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        signal.set_wakeup_fd(old_fd)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        wsock.close()
        with contextlib.suppress(OSError):
            rsock.shutdown(socket.SHUT_RDWR)
        watcher.join(timeout=1.0)
        rsock.close()
