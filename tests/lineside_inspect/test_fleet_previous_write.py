"""previous.json is a best-effort aid to a resumed watch: a write of it that fails (a
full or read-only disk) is logged, never an exception out of the box's start-up restore
or a pull (review, session 47)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from lineside_inspect.fleet.box.models import (
    PREVIOUS_FILE,
    ModelPuller,
    Previous,
    PreviousPulls,
    _read_json,
)


def test_a_previous_json_that_cannot_be_written_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where the folder should be")  # every write below fails
    puller = SimpleNamespace(root=blocker / "inner", _files=threading.RLock(),
                             previous=PreviousPulls(models={
        "deeppcb": Previous(version="1", sha256="a", graph_sha256="b",
                            card_digest="c" * 64, promoted="2")}))
    with caplog.at_level(logging.ERROR, logger="lineside"):
        ModelPuller._save_previous(puller, PreviousPulls())  # type: ignore[arg-type]
    assert puller.previous == PreviousPulls()  # the watch ended all the same
    assert "previous.json" in caplog.text


@pytest.mark.parametrize("digest", [None, "", "not a digest"])
def test_a_previous_record_without_its_card_digest_is_not_read(
        tmp_path: Path, digest: str | None, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged or hand-made previous.json with no card digest (null) loaded whatever
    card its folder held as the version a rollback switches to: only the graph's sha256,
    from the same file, was checked (final review, session 47). The file is not read."""
    path = tmp_path / PREVIOUS_FILE
    path.write_text(f'{{"models": {{"deeppcb": {{"version": "1", "sha256": "a", '
                    f'"graph_sha256": "b", "card_digest": {json.dumps(digest)}, '
                    f'"promoted": "2"}}}}}}')
    with caplog.at_level(logging.ERROR, logger="lineside"):
        assert _read_json(path, PreviousPulls, "not resumed") == PreviousPulls()
    assert "unreadable" in caplog.text
