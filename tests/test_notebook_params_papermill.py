"""papermill reads every notebook's parameters cell itself (``PythonTranslator.inspect``: a line with two ``=``, as a
comment saying ``>=`` gives, is skipped with a warning, and injecting that parameter then warns "Passed unknown
parameter"): every declared name must come through."""

from __future__ import annotations

import logging

import pytest

from kitlib.params import read_declaration
from tests.conftest import REPO

NOTEBOOKS = sorted(p.stem for p in (REPO / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_sees_every_parameter(name, caplog):
    from papermill.translators import PythonTranslator

    source = (REPO / "notebooks" / f"{name}.py").read_text(encoding="utf-8")
    cell = source.split('# %% tags=["parameters"]', 1)[1].split("\n# %%", 1)[0]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        seen = {p.name for p in PythonTranslator.inspect({"source": cell})}
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert set(read_declaration(REPO / "notebooks" / f"{name}.py")) <= seen
