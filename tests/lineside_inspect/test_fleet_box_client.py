"""The box's hub client against a hostile hub (a real HTTP server on loopback): what the
hub sends is bounded as it comes off the wire, and its words reach the box's log as one
line."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lineside_inspect.errors import HubRefused, HubUnavailable
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import Assignment, ReviewBatch
from lineside_inspect.store import Store

# 64 KiB of gzip that decodes to 64 MiB: what the box would have written
BOMB = gzip.compress(b"\0" * (64 << 20), compresslevel=9)


def _send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes, part: int = 0,
               pause_s: float = 0.0) -> None:
    """``body`` as a JSON answer, in parts of ``part`` bytes ``pause_s`` apart (0: whole)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    step = part or len(body)
    for i in range(0, len(body), step):
        handler.wfile.write(body[i:i + step])
        handler.wfile.flush()
        time.sleep(pause_s)


@contextlib.contextmanager
def _hub_answering(answer: bytes) -> Iterator[HubClient]:
    """A hub on loopback whose review stream answers ``answer`` from the start (then
    nothing), and box1's client of it."""
    class Hub(_Quiet):
        def do_GET(self) -> None:
            _send_json(self, 200, answer if "after=0" in self.path else b'{"items": []}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = HubClient(FleetSettings(hub_url=f"http://127.0.0.1:{server.server_address[1]}",
                                     token="t", timeout_s=5), "box1")  # type: ignore[arg-type]
    try:
        yield client
    finally:
        client.close()
        server.shutdown()


def _box_with_one_part(tmp_path: Path) -> tuple[Store, str]:
    """Box1's store holding one failed inspection, and its id."""
    from datetime import UTC, datetime

    from sqlalchemy.orm import Session

    from lineside_inspect.fleet.hub.bench_reviews import synthetic_rows

    store = Store(tmp_path / "box", box_id="box1")
    row = synthetic_rows(1, box_id="box1", site="s", line="l", now=datetime.now(UTC),
                         fail_every=1)[0]
    iid = row.id  # (read before its session ends: expired after the commit)
    with Session(store.engine) as s, s.begin():
        s.add(row)
    return store, iid


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _HostileHub(_Quiet):
    def do_GET(self) -> None:
        if "/hub-reviews" in self.path:
            review = ('{"seq": 1, "inspection_id": "' + "a" * 32 + '", "created_at": '
                      '"2026-12-01T00:00:00Z", "reviewer": "qa\\ud800", "action": "confirm", '
                      '"boxes": [], "note": "", "origin": "hub"}')
            body = ('{"items": [' + review + ']}').encode()
            if "drip" in self.path:  # 4 bytes at a time, each well within timeout_s
                _send_json(self, 200, body, part=4, pause_s=0.3)
            else:
                _send_json(self, 200, body)
            return
        if "drip" in self.path and self.path.endswith(".tar.gz"):  # a byte every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(600):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the box gave up
                pass
            return
        if self.path.endswith("/package.tar.gz") or "/assignment-bomb" in self.path:
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(BOMB)))
            self.end_headers()
            self.wfile.write(BOMB)
            return
        _send_json(self, 418, b'{"error": {"code": "x", "message": '
                   b'"bad\\n2026-12-04 CRITICAL lineside: FORGED"}}')


@pytest.fixture
def hub() -> Iterator[HubClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # an answer must come whole within ANSWER_TIMEOUTS x 1.5 s = 9 s; each read within
    # 1.5 s (0.5 s was a read timed out, not the refusal asserted, when the hub's thread got
    # no CPU that long on a loaded CI host)
    settings = FleetSettings(hub_url=f"http://127.0.0.1:{server.server_address[1]}",
                             token="t", timeout_s=1.5)  # type: ignore[arg-type]
    client = HubClient(settings, "box1")
    yield client
    client.close()
    server.shutdown()


def test_a_package_sent_with_a_content_encoding_is_refused_unwritten(hub: HubClient,
                                                                   tmp_path: Path) -> None:
    """Decoded, 4 MiB of gzip on the wire wrote 2 GiB to the box's disk before the sha256
    check, at every pull (hostile-hub probe)."""
    dest = tmp_path / "package.tar.gz"
    with pytest.raises(HubRefused, match="Content-Encoding 'gzip'"):
        hub.download("/fleet/v1/packages/m/1/package.tar.gz", dest, max_bytes=1 << 30)
    assert not dest.exists()


def test_a_package_dripped_slower_than_the_floor_is_given_up(hub: HubClient,
                                                             tmp_path: Path) -> None:
    """A byte every 0.1 s, each within the read timeout, held the model puller (and its
    lock) as long as the hub liked. Past ANSWER_TIMEOUTS x timeout_s (9 s here) a
    download must average MIN_DOWNLOAD_RATE; the partial file goes."""
    dest = tmp_path / "package.tar.gz"
    with pytest.raises(HubUnavailable, match="slower than 64 kbit/s: download given up"):
        hub.download("/fleet/v1/packages/m/1/drip/package.tar.gz", dest, max_bytes=1 << 30)
    assert not dest.exists()


def test_the_hubs_error_words_are_one_log_line(hub: HubClient) -> None:
    with pytest.raises(HubRefused) as refused:
        hub.get("/fleet/v1/boxes/box1/assignment", Assignment)
    text = str(refused.value)
    assert "\n" not in text and "bad\\n2026-12-04 CRITICAL" in text, text


def test_an_answer_dripped_past_its_deadline_is_cut(hub: HubClient) -> None:
    """A byte every few seconds, each within the read timeout, held the box's review sync
    as long as the hub liked (httpx's timeout is per read). The whole answer (~230 bytes
    at 4 every 300 ms: ~17 s) must come within ANSWER_TIMEOUTS x timeout_s (9 s)."""
    with pytest.raises(HubUnavailable, match="did not come whole in time"):
        hub.get("/fleet/v1/boxes/box1/hub-reviews?drip=1", ReviewBatch)


def test_a_lone_surrogate_in_an_answer_is_taken_as_u_fffd(hub: HubClient) -> None:
    """One review's lone surrogate made the whole batch "not a ReviewBatch", and the box
    asked for the same batch for good."""
    batch = hub.get("/fleet/v1/boxes/box1/hub-reviews", ReviewBatch)
    assert [r.reviewer for r in batch.items] == ["qa\ufffd"]


def test_a_hub_review_dated_far_ahead_is_skipped_and_the_stream_goes_on(tmp_path: Path) -> None:
    """A hub review dated years ahead outranked every later review made on the box (one
    at the end of time made them 500s); it is skipped, logged, and the next is applied."""
    from datetime import UTC, datetime, timedelta

    from lineside_inspect.fleet.box.reviews import ReviewSync

    store, iid = _box_with_one_part(tmp_path)

    def review(seq: int, at: datetime) -> dict[str, object]:
        return {"seq": seq, "inspection_id": iid, "created_at": at.isoformat(),
                "reviewer": "lead", "action": "false_reject", "boxes": [], "note": "",
                "origin": "hub"}

    now = datetime.now(UTC)
    answer = json.dumps({"items": [review(1, now + timedelta(days=3650)),
                                   review(2, now - timedelta(minutes=1))]}).encode()

    with _hub_answering(answer) as client:
        try:
            sync = ReviewSync(store, client)
            assert sync.pull_down() == 1
            assert sync.cursor() == 2
            [kept] = store.get(iid).reviews
            assert kept.created_at.replace(tzinfo=UTC) < datetime.now(UTC)
            store.review(iid, reviewer="here", action="confirm")  # a later one follows it
            assert store.get(iid).reviews[-1].reviewer == "here"
        finally:
            store.close()


def test_an_answer_sent_compressed_is_refused_unread(hub: HubClient) -> None:
    """httpx decoded each network chunk whole before the answer's bound counted it: 64 KiB
    of gzip were 64 MiB in the box's memory (a bound of 4 MiB). Answers are asked for, and
    taken, unencoded (review, session 33)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(HubRefused, match="Content-Encoding 'gzip'"):
            hub.get("/fleet/v1/boxes/box1/assignment-bomb", Assignment)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MiB held for {len(BOMB)} bytes of gzip"


def test_a_hub_review_taken_down_is_the_hubs_in_the_boxs_tally(tmp_path: Path) -> None:
    """A review made on the hub by ``qa`` and taken down by the box was filed under no box,
    so the box's "Reviews this shift" counted it as made on the box: one ``qa`` of 2 beside
    the box's own ``qa``. It is filed under the hub (as the hub files it), a tally entry
    of its own that the pages name ``qa (hub)``; a box sharing its database counts the
    hub's reviews of its own inspections, not another box's."""
    from datetime import UTC, datetime, timedelta

    from lineside_inspect.fleet.box.reviews import ReviewSync
    from lineside_inspect.store import stats

    store, iid = _box_with_one_part(tmp_path)
    made = datetime.now(UTC) - timedelta(minutes=1)
    answer = json.dumps({"items": [{"seq": 1, "inspection_id": iid, "created_at": made.isoformat(),
                                    "reviewer": "qa", "action": "false_reject", "boxes": [],
                                    "note": "", "origin": "hub"}]}).encode()

    with _hub_answering(answer) as client:
        try:
            assert ReviewSync(store, client).pull_down() == 1
            store.review(iid, reviewer="qa", action="confirm")  # the box's own qa
            since, until = made - timedelta(hours=1), datetime.now(UTC) + timedelta(minutes=1)

            def tally(here: str | None) -> list[tuple[str, str | None, int]]:
                conds = stats.Scope.of(here=here).reviews
                return [(r["reviewer"], r["box_id"], r["reviews"])
                        for r in store.read(lambda s: stats.reviewers(s, since, until, conds))]

            assert sorted(tally(None)) == [("qa", "box1", 1), ("qa", "hub", 1)]
            assert sorted(tally("box1")) == [("qa", "box1", 1), ("qa", "hub", 1)]
            assert tally("box2") == []  # box1's part: box2 sharing the database counts none
            assert [(r.reviewer, r.origin, r.box_id) for r in store.get(iid).reviews] == [
                ("qa", "hub", "hub"), ("qa", "box", "box1")]
        finally:
            store.close()
