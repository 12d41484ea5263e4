"""Checks shared by the label-file readers (``kitlib.formats``, ``kitlib.coco``): the error they raise and the
unique-id and known-class checks, each naming the file and the offending values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kitlib._private import listing

__all__ = ["CompetitionDataError", "check_unique", "check_classes"]


class CompetitionDataError(ValueError):
    """A competition folder or label file that cannot be read as it is.

    Attributes:
        ids: the offending image ids (or row labels), all of them, not only the few in the message.
    """

    def __init__(self, message: str, ids: Sequence[str] = ()):
        super().__init__(message)
        self.ids = list(ids)


def check_unique(ids: pd.Series, source: Path, what: str = "image id") -> None:
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        uniq = list(dict.fromkeys(dup.tolist()))
        raise CompetitionDataError(f"{source}: {len(uniq)} duplicated {what}(s): {listing(uniq)}", uniq)


def check_classes(names: pd.Series, source: Path, classes: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise CompetitionDataError(f"{source}: unknown class name(s) {listing(unknown)}; known: {list(classes)}",
                                   unknown)  # fmt: skip
