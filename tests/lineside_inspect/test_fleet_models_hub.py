"""The hub's model routes on a real hub (uvicorn on loopback, records in a real PostgreSQL,
packages in a real SeaweedFS): publishing, versions immutable, who may read
and change assignments, and hostile input answered with a 4xx."""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

from lineside_inspect.config import ApiKey
from lineside_inspect.errors import HubUnavailable
from lineside_inspect.fleet import archive, signing
from lineside_inspect.fleet.hub.app import create_hub_app
from lineside_inspect.fleet.hub.config import HubSettings
from lineside_inspect.fleet.hub.models import MAX_MANIFEST_BYTES, SIGNATURE_HEADER
from lineside_inspect.fleet.objects import ObjectStore
from lineside_inspect.fleet.protocol import Assignment
from lineside_inspect.package import load_package, write_card
from lineside_inspect.serve import uvicorn_config

from .conftest import ROOT

if TYPE_CHECKING:
    from lineside_inspect.fleet.box.models import ModelPuller

SMALL = ROOT / "models" / "deeppcb" / "1-int8"  # the smallest real package

KEYS = {"admin": ("admin", "hub-admin"), "box-a": ("box", "box-a-key"),
        "box-b": ("box", "box-b-key"), "reviewer": ("reviewer", "hub-reviewer")}


@dataclass
class Hub:
    url: str
    objects: ObjectStore

    def client(self, who: str | None = "admin") -> httpx.Client:
        headers = {"authorization": f"Bearer {KEYS[who][1]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


BUCKET = f"models-{uuid.uuid4().hex[:12]}"  # one per run: a new bucket's first write is slow


def start_hub(weed: Any, tmp: Path, database_url: str) -> tuple[Hub, Any]:
    hub = HubSettings(
        database_url=database_url, data_dir=str(tmp / "hub"),
        objects=weed.settings(BUCKET),
        api_keys=[ApiKey.from_plain(name, role, key) for name, (role, key) in KEYS.items()])  # type: ignore[arg-type]
    app = create_hub_app(hub)
    server = uvicorn.Server(uvicorn_config(app, hub.server_settings(), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not (server.started and app.state.ready):
        assert time.time() < deadline and thread.is_alive(), "hub did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return Hub(f"http://127.0.0.1:{port}", app.state.objects), stop


def pulled(puller: ModelPuller) -> list[str]:
    """``puller.pull()`` once the hub answered every call of a try, tried again as the
    box's loop tries at its next pull: a call the hub did not answer within the box's
    ``timeout_s`` (10 s; a loaded CI host) ends a pull quietly (a warning, or a note
    "retried next pull"), which asserted failed, or passed for nothing having happened.
    A cut try applies nothing (what it downloaded is removed with ``.incoming``). The
    files (last path part) the try that went downloaded."""
    deadline = time.monotonic() + 60
    while True:
        cut, fetched = _try_pull(puller)
        if not cut:
            return fetched
        assert time.monotonic() < deadline, f"the hub answered no pull: {cut}"
        time.sleep(0.1)  # the poll's interval, not a wait for the hub


def _try_pull(puller: ModelPuller) -> tuple[list[str], list[str]]:
    """One ``puller.pull()``: what the hub did not answer in it, and the files it
    downloaded."""
    client = puller.client
    cut: list[str] = []
    fetched: list[str] = []
    own = {n: vars(client).get(n) for n in ("get", "download")}  # (a test's own)
    download = client.download

    def heard(call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return call(*args, **kw)
            except HubUnavailable as exc:
                cut.append(exc.message)
                raise
        return run

    def fetch(path: str, *args: Any, **kw: Any) -> Any:
        fetched.append(path.rsplit("/", 1)[-1])
        return download(path, *args, **kw)

    setattr(client, "get", heard(client.get))  # noqa: B010 (a method: mypy)
    setattr(client, "download", heard(fetch))  # noqa: B010
    try:
        puller.pull()
    finally:
        for name, was in own.items():
            if was is None:
                delattr(client, name)
            else:
                setattr(client, name, was)
    return cut, fetched

@pytest.fixture(scope="module")
def hub(weed: Any, postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub on a fresh database of the real PostgreSQL (the e2e test runs one on SQLite)."""
    from sqlalchemy import create_engine, text

    name = f"t_{uuid.uuid4().hex[:10]}"
    server = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    running, stop = start_hub(weed, tmp_path_factory.mktemp("hub"), f"{postgres}/{name}")
    yield running
    stop()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> signing.Ed25519PrivateKey:
    folder = tmp_path_factory.mktemp("key")
    signing.generate(folder / "k.pem", folder / "k.pub.pem")
    return signing.load_private_key(folder / "k.pem")


def versioned(tmp: Path, version: str) -> Path:
    """A bundled package under another version (same graph)."""
    dest = tmp / f"deeppcb-{version}"
    shutil.copytree(SMALL, dest)
    card = load_package(dest).card.model_copy(update={"version": version})
    write_card(dest, card)
    return dest


def publish(hub: Hub, key: Any, folder: Path, *, who: str | None = "admin", name: str | None = None,
            version: str | None = None, sig: bytes | None = None) -> httpx.Response:
    card = load_package(folder).card
    data = archive.pack(folder)
    name, version = name or card.name, version or card.version
    sig = sig if sig is not None else signing.sign(key, name, version, archive.sha256_bytes(data))
    with hub.client(who) as c:
        return c.put(f"/fleet/v1/packages/{name}/{version}", content=data,
                     headers={SIGNATURE_HEADER: base64.b64encode(sig).decode()})


def test_publish_is_immutable_and_served_to_boxes(hub: Hub, key: Any, tmp_path: Path) -> None:
    folder = versioned(tmp_path, "p1")
    first = publish(hub, key, folder)
    assert first.status_code == 201, first.text
    manifest = first.json()
    data = archive.pack(folder)
    assert manifest["sha256"] == archive.sha256_bytes(data)
    assert manifest["published_by"] == "admin"
    # the same bytes again: the same manifest; other bytes under the version: refused
    again = publish(hub, key, folder)
    assert again.status_code == 200 and again.json() == manifest
    card = load_package(folder).card
    write_card(folder, card.model_copy(update={"thresholds": {"open": 0.33}}))
    other = publish(hub, key, folder)
    assert other.status_code == 409 and other.json()["error"]["code"] == "version_exists"
    # a box reads the package and its signature, byte for byte
    with hub.client("box-a") as c:
        got = c.get("/fleet/v1/packages/deeppcb/p1/package.tar.gz")
        assert got.status_code == 200 and got.content == data
        sig = c.get("/fleet/v1/packages/deeppcb/p1/package.sig").content
        assert signing.verify([signing.TrustedKey.of(key.public_key())], "deeppcb", "p1",
                              manifest["sha256"], sig)
        assert c.get("/fleet/v1/packages/deeppcb/none/package.tar.gz").status_code == 404
    with hub.client() as c:
        listed = c.get("/fleet/v1/packages").json()
    assert [m["version"] for m in listed if m["name"] == "deeppcb"] == ["p1"]


def test_publish_refusals(hub: Hub, key: Any, tmp_path: Path) -> None:
    folder = versioned(tmp_path, "p2")
    # only an admin publishes, and the body is not read before the key is checked
    assert publish(hub, key, folder, who="box-a").status_code == 403
    assert publish(hub, key, folder, who="reviewer").status_code == 403
    assert publish(hub, key, folder, who=None).status_code == 401
    # the URL must name the card's model and version
    wrong = publish(hub, key, folder, version="p3")
    assert wrong.status_code == 422 and "not deeppcb p3" in wrong.json()["error"]["message"]
    bad_sig = publish(hub, key, folder, sig=b"short")
    assert bad_sig.status_code == 422
    assert bad_sig.json()["error"]["code"] == "invalid_signature"
    with hub.client() as c:
        junk = c.put("/fleet/v1/packages/deeppcb/p4", content=b"not a tar.gz",
                     headers={SIGNATURE_HEADER: base64.b64encode(b"s" * 64).decode()})
        assert junk.status_code == 422 and junk.json()["error"]["code"] == "invalid_model_package"
        # an archive that unpacks to no package: named as the archive, never the hub's
        # folder it was unpacked in (attacker review, session 21)
        empty = c.put("/fleet/v1/packages/deeppcb/p4", content=gzip.compress(b"\0" * 10240),
                      headers={SIGNATURE_HEADER: base64.b64encode(b"s" * 64).decode()})
        assert empty.status_code == 422, empty.text
        assert empty.json()["error"]["message"].startswith("the archive: "), empty.text
        assert "incoming" not in empty.text and "/tmp" not in empty.text
        for path in ("/fleet/v1/packages/..%2Fx/1", "/fleet/v1/packages/a%0A/1"):
            r = c.put(path, content=b"x", headers={SIGNATURE_HEADER: "x"})
            assert 400 <= r.status_code < 500 and "Traceback" not in r.text
        # a foreign page may not publish with an admin's cookie-less key either
        r = c.put("/fleet/v1/packages/deeppcb/p5", content=b"x",
                  headers={SIGNATURE_HEADER: "x", "origin": "https://evil.example"})
        assert r.status_code == 403
    with hub.client("box-a") as c:
        assert c.get("/fleet/v1/packages/deeppcb/p4/package.tar.gz").status_code == 404


def test_assignments(hub: Hub, key: Any, tmp_path: Path) -> None:
    assert publish(hub, key, versioned(tmp_path, "a1")).status_code == 201
    assert publish(hub, key, versioned(tmp_path, "a2")).status_code == 201
    with hub.client() as admin:
        r = admin.put("/fleet/v1/lines/L7/models/deeppcb", json={"version": "a1"})
        assert r.status_code == 200, r.text
        first = Assignment.model_validate(r.json())
        assert first.revision == 1 and [m.version for m in first.models] == ["a1"]
        # unchanged: no new revision; changed: the revision rises
        same = admin.put("/fleet/v1/lines/L7/models/deeppcb", json={"version": "a1"}).json()
        assert same["revision"] == 1
        second = admin.put("/fleet/v1/lines/L7/models/deeppcb", json={"version": "a2"}).json()
        assert second["revision"] == 2 and second["models"][0]["version"] == "a2"
        missing = admin.put("/fleet/v1/lines/L7/models/deeppcb", json={"version": "nope"})
        assert missing.status_code == 404
        bad = admin.put("/fleet/v1/lines/L7/models/deeppcb", json={"version": "../a1"})
        assert bad.status_code == 422
        assert admin.get("/fleet/v1/lines/L7/assignment").json() == second
    with hub.client("box-a") as box:
        mine = box.get("/fleet/v1/boxes/box-a/assignment", params={"line": "L7"})
        assert mine.status_code == 200 and mine.json() == second
        assert box.get("/fleet/v1/boxes/box-a/assignment").json()["models"] == []
        # a box reads only as itself, and changes nothing
        other = box.get("/fleet/v1/boxes/box-b/assignment", params={"line": "L7"})
        assert other.status_code == 403
        assert box.put("/fleet/v1/lines/L7/models/deeppcb",
                       json={"version": "a1"}).status_code == 403
        assert box.get("/fleet/v1/boxes/box-a/assignment",
                       params={"line": "../L7"}).status_code == 422
    with hub.client("reviewer") as c:
        assert c.get("/fleet/v1/boxes/box-a/assignment").status_code == 403
    with hub.client() as admin:
        gone = admin.delete("/fleet/v1/lines/L7/models/deeppcb").json()
        assert gone["revision"] == 3 and gone["models"] == []


def test_a_box_or_reviewer_key_gets_403_before_an_admin_body_is_parsed(hub: Hub) -> None:
    """A box or reviewer key sending a malformed or foreign body to an admin route got the
    parser's 422 (the body parsed for a key that may not call it; review, session 37):
    403 first now, and the admin still gets the parse error."""
    json_type = {"content-type": "application/json"}
    for who in ("box-a", "reviewer"):
        with hub.client(who) as c:
            for body in (b"{", b'{"version": 7}'):
                r = c.put("/fleet/v1/lines/L9/models/deeppcb", content=body, headers=json_type)
                assert r.status_code == 403, (who, body, r.text)
                assert r.json()["error"]["code"] == "forbidden"
    with hub.client() as admin:
        r = admin.put("/fleet/v1/lines/L9/models/deeppcb", content=b"{", headers=json_type)
        assert r.status_code == 422 and "JSON decode error" in r.text, r.text


def test_concurrent_assignments(hub: Hub, key: Any, tmp_path: Path) -> None:
    """Admins changing one line at once: every change lands, one after the other."""
    models = []
    for i in range(3):
        folder = versioned(tmp_path, f"c{i}")
        write_card(folder, load_package(folder).card.model_copy(update={"name": f"m{i}"}))
        assert publish(hub, key, folder).status_code == 201
        models.append(f"m{i}")
    results: list[int] = []

    def assign(model: str) -> None:
        with hub.client() as c:
            results.append(c.put(f"/fleet/v1/lines/L1/models/{model}",
                                 json={"version": f"c{model[1:]}"}).status_code)

    threads = [threading.Thread(target=assign, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 3
    with hub.client() as admin:
        final = admin.get("/fleet/v1/lines/L1/assignment").json()
    assert final["revision"] == 3
    assert sorted(m["name"] for m in final["models"]) == models


def test_damaged_objects_in_the_bucket(hub: Hub, key: Any, tmp_path: Path) -> None:
    """Objects under packages/ that the hub did not write as they are (fleet review,
    session 32): one bad manifest made the list, assignments and downloads 500s, and an
    archive cut short in the bucket could not be mended by publishing again."""
    folder = versioned(tmp_path, "d1")
    assert publish(hub, key, folder).status_code == 201
    data = archive.pack(folder)
    hub.objects.put("packages/deeppcb/d2/manifest.json", b"{not json")
    hub.objects.put("packages/deeppcb/d3/manifest.json", b"{}" + b" " * MAX_MANIFEST_BYTES)
    hub.objects.client.put_object(hub.objects.bucket, "packages/old copy/1/manifest.json",
                                  io.BytesIO(b"{}"), 2)
    with hub.client() as admin:
        listed = admin.get("/fleet/v1/packages")
        assert listed.status_code == 200, listed.text
        assert "d1" in [m["version"] for m in listed.json()]
        assert not {"d2", "d3"} & {m["version"] for m in listed.json()}
        for version, words in (("d2", "is damaged"), ("d3", f"over {MAX_MANIFEST_BYTES} bytes")):
            r = admin.put("/fleet/v1/lines/L9/models/deeppcb", json={"version": version})
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "damaged_object" and words in err["message"]
            assert "publish the version again" in err["message"]
    hub.objects.put("packages/deeppcb/d4/package.sig", b"s" * 64)  # no manifest: unpublished
    with hub.client("box-a") as box:
        for leaf in ("package.tar.gz", "package.sig"):
            assert box.get(f"/fleet/v1/packages/deeppcb/d2/{leaf}").status_code == 409
            assert box.get(f"/fleet/v1/packages/deeppcb/d4/{leaf}").status_code == 404
    # the archive cut short in the bucket: the same package published again mends it
    hub.objects.put("packages/deeppcb/d1/package.tar.gz", data[:1000])
    again = publish(hub, key, folder)
    assert again.status_code == 200, again.text
    assert hub.objects.get("packages/deeppcb/d1/package.tar.gz") == data
    # a damaged manifest: publishing the version writes it anew
    d2 = versioned(tmp_path, "d2")
    mended = publish(hub, key, d2)
    assert mended.status_code == 201, mended.text
    with hub.client("box-a") as box:
        got = box.get("/fleet/v1/packages/deeppcb/d2/package.tar.gz")
        assert got.status_code == 200 and got.content == archive.pack(d2)
    # a damaged manifest does not let other bytes take a published version: its archive
    # says what was published (review of the above, session 32)
    hub.objects.put("packages/deeppcb/d1/manifest.json", b"{not json")
    card = load_package(folder).card
    write_card(folder, card.model_copy(update={"thresholds": {"open": 0.31}}))
    other = publish(hub, key, folder)
    assert other.status_code == 409 and other.json()["error"]["code"] == "version_exists", other.text
    write_card(folder, card)
    assert publish(hub, key, folder).status_code == 201  # the same bytes: written anew
    assert hub.objects.get("packages/deeppcb/d1/package.tar.gz") == data


def test_the_largest_card_publishes_and_reads_back(hub: Hub, key: Any, tmp_path: Path) -> None:
    """A manifest carries its card's class names: 1,000 of 100 characters made a 103 KB
    manifest that the hub then called damaged (review, session 32)."""
    folder = versioned(tmp_path, "big1")
    card = load_package(folder).card
    names = [f"{i:03d}" + "c" * 97 for i in range(1000)]
    meta_folder = folder / "model.onnx"
    import onnx

    graph = onnx.load(str(meta_folder), load_external_data=False)
    for p in graph.metadata_props:
        if p.key == "lineside.class_names":
            p.value = json.dumps(names)
    onnx.save(graph, str(meta_folder))
    from lineside_inspect.package import sha256_file

    write_card(folder, card.model_copy(update={
        "class_names": names, "thresholds": {}, "default_recipe": {},
        "sha256": sha256_file(meta_folder)}))
    r = publish(hub, key, folder)
    assert r.status_code == 201, r.text
    with hub.client() as admin:
        assert "big1" in [m["version"] for m in admin.get("/fleet/v1/packages").json()]
        r = admin.put("/fleet/v1/lines/L8/models/deeppcb", json={"version": "big1"})
        assert r.status_code == 200, r.text


def test_publish_bounds_what_a_package_unpacks_to(hub: Hub, key: Any, tmp_path: Path) -> None:
    """A small archive that unpacks to gigabytes (fleet review, session 32: 1 MB of gzip
    made the hub write 1 GiB and hold 1.2 GB): refused from its members' declared sizes
    before any is written, at 4 x max_body_bytes (64 MiB by default)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for name in ("model.json", "model.onnx"):
            info = tarfile.TarInfo(name)
            info.size = 2 if name == "model.json" else (256 << 20) + 1
            tar.addfile(info, io.BytesIO(b"{}") if name == "model.json" else _Zeros())
    with hub.client() as c:
        r = c.put("/fleet/v1/packages/deeppcb/b1", content=buf.getvalue(),
                  headers={SIGNATURE_HEADER: base64.b64encode(b"s" * 64).decode()})
    assert r.status_code == 422, r.text
    assert "unpacks to over 268435456 bytes" in r.json()["error"]["message"]


class _Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        b[:] = bytes(len(b))
        return len(b)
