"""Hold back other libraries' log lines and warnings that say nothing a user of fxq can act on."""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterable, Iterator


@contextlib.contextmanager
def quiet(loggers: Iterable[str] = (), warning_filters: Iterable[tuple[type[Warning], str]] = ()) -> Iterator[None]:
    """For the `with` block only: the named loggers pass errors alone, and warnings of each
    (category, message regex) are ignored. Levels and warning filters are restored after."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [lg.level for lg in found]
    with warnings.catch_warnings():
        for category, message in warning_filters:
            warnings.filterwarnings("ignore", message=message, category=category)
        for lg in found:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(found, levels):
                lg.setLevel(level)
