"""Reloads the priority table file (the controller's ``priorities.yaml``) when it changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from scheduler.priority import InvalidSettings, PriorityTable

log = logging.getLogger(__name__)

# libyaml's safe loader where PyYAML has it: the pure-Python one took 10 s for 600 KB
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_table(path: Path) -> PriorityTable:
    """Parse ``path``; a missing file is an empty table. Raises ``InvalidSettings``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PriorityTable({})
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, not UTF-8
        raise InvalidSettings(f"{path}: cannot be read: {exc}") from None
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise InvalidSettings(f"{path}: not valid YAML: {exc}") from None
    try:
        return PriorityTable.from_dict(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidSettings(f"{path}: {type(exc).__name__}: {str(exc)[:300]}") from None


class PriorityFileWatcher:
    """Polls a file and hands every changed, valid table to ``apply``.

    An invalid file is logged and ignored: the table in force stays. ``check()`` does one
    poll (tests call it directly); ``start()`` polls on a daemon thread every ``period_s``.
    """

    def __init__(self, path: Path, apply: Callable[[PriorityTable], None],
                 period_s: float = 1.0) -> None:
        self.path = path
        self.apply = apply
        self.period_s = period_s
        self._seen: tuple[float, int, str] | None = None
        self._stop = threading.Event()
        self.errors = 0

    def _signature(self) -> tuple[float, int, str]:
        try:
            st = self.path.stat()
            # ConfigMap volumes swap a symlink: the resolved target changes on update
            return (st.st_mtime, st.st_size, str(self.path.resolve()))
        except FileNotFoundError:
            return (0.0, -1, "")

    def check(self) -> bool:
        """Apply the file if it changed since the last check; True if a table was applied."""
        sig = self._signature()
        if sig == self._seen:
            return False
        self._seen = sig
        try:
            table = read_table(self.path)
        except InvalidSettings as exc:
            self.errors += 1
            log.error("priority table not applied: %s", exc)
            return False
        self.apply(table)
        return True

    def start(self) -> None:
        self.check()  # an invalid file is logged: the server starts on the models' own settings
        threading.Thread(target=self._run, name="deft-priorities", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception:  # keep watching whatever happens to one read
                log.exception("priority table check failed")

    def stop(self) -> None:
        self._stop.set()
