"""A box's puller against a package whose version it serves already: the whole card
counts (not the graph alone), and a loaded version's folder is never replaced. A real
hub (uvicorn, SQLite, packages in a real SeaweedFS) and the box's real registry."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lineside_inspect.config import Settings
from lineside_inspect.errors import PackageError
from lineside_inspect.fleet import archive, signing
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.models import ModelPuller
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import AssignedModel
from lineside_inspect.package import card_digest, load_package, write_card
from lineside_inspect.server.registry import Registry

from .test_fleet_models_hub import KEYS, publish, pulled, start_hub, versioned


@dataclass
class _Box:
    hub: Any
    key: Any  # the publisher's private key
    registry: Registry
    puller: ModelPuller


@contextlib.contextmanager
def _box_and_hub(weed: Any, tmp_path: Path, **fleet_kw: Any) -> Iterator[_Box]:
    """A real hub (SQLite, SeaweedFS) and a box's model puller on line L1 trusting one
    publisher key, without the rest of a box server."""
    pub = tmp_path / "k.pub.pem"
    signing.generate(tmp_path / "k.pem", pub)
    hub, stop = start_hub(weed, tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    fleet = FleetSettings(hub_url=hub.url, token=KEYS["box-a"][1], line="L1",  # type: ignore[arg-type]
                          trusted_keys=[str(pub)], timeout_s=10, **fleet_kw)
    registry = Registry(device="cpu", threads=1)
    client = HubClient(fleet, "box-a")
    puller = ModelPuller(SimpleNamespace(state=SimpleNamespace(registry=registry)),
                         Settings(data_dir=str(tmp_path / "box"), fleet=fleet), client)
    puller.keys = [signing.load_public_key(str(pub))]
    try:
        yield _Box(hub, signing.load_private_key(tmp_path / "k.pem"), registry, puller)
    finally:
        client.close()
        stop()


def test_a_served_version_is_never_replaced_by_another_card(weed: Any, tmp_path: Path) -> None:
    with _box_and_hub(weed, tmp_path) as box:
        hub, key, registry, puller = box.hub, box.key, box.registry, box.puller
        # the box serves v1 from its pulled folder (an earlier hub's, or its pulled.json lost)
        served = puller.root / "deeppcb" / "v1"
        shutil.copytree(versioned(tmp_path, "v1"), served)
        registry.load(served)
        before = (served / "model.json").read_bytes()
        # the hub's v1: the same graph, another card (a threshold changed)
        (tmp_path / "published").mkdir()
        other = versioned(tmp_path / "published", "v1")
        card = load_package(other).card
        write_card(other, card.model_copy(update={"thresholds": {"short": 0.99}}))
        assert publish(hub, key, other).status_code == 201
        with hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "v1"})
            assert r.status_code == 200, r.text
        pulled(puller)
        assert any("v1: version v1 is already loaded on this box with another graph or card"
                   in e for e in puller.errors()), puller.errors()
        assert (served / "model.json").read_bytes() == before  # never replaced
        assert card_digest(registry.detector("deeppcb", "v1").card) == card_digest(
            load_package(served).card)
        # the same package as the one served: its folder is kept as it is, not replaced
        m = AssignedModel(name="deeppcb", version="v1",
                          sha256=archive.sha256_bytes(archive.pack(served)))
        assert puller._check_clash(m, load_package(served).card, served) is True
        # a folder a loaded version serves from is never removed for another version
        with pytest.raises(PackageError, match="holds loaded model deeppcb v1"):
            puller._check_clash(m.model_copy(update={"version": "v2"}),
                                load_package(served).card.model_copy(update={"version": "v2"}),
                                served)


def test_an_unloaded_versions_folder_is_not_replaced_by_another_card(
        weed: Any, tmp_path: Path) -> None:
    """A version unloaded from memory (keep_loaded, DELETE /v1/models/...) keeps its name
    and its folder: the hub's same version with another card removed that folder before
    the registry refused the card, and a rollback then had nothing to load (review,
    session 39). Versions named apart from the other tests' (one SeaweedFS)."""
    with _box_and_hub(weed, tmp_path) as box:
        hub, key, registry, puller = box.hub, box.key, box.registry, box.puller
        served = puller.root / "deeppcb" / "u1"
        shutil.copytree(versioned(tmp_path, "u1"), served)
        registry.load(served)
        registry.load(versioned(tmp_path, "u2"))  # active; u1 the rollback's way back
        registry.unload("deeppcb", "u1", force=True)
        before = (served / "model.json").read_bytes()
        (tmp_path / "published").mkdir()
        other = versioned(tmp_path / "published", "u1")
        write_card(other, load_package(other).card.model_copy(
            update={"thresholds": {"short": 0.99}}))
        assert publish(hub, key, other).status_code == 201
        with hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "u1"})
            assert r.status_code == 200, r.text
        pulled(puller)
        assert any("version u1 is already unloaded on this box with another graph or card"
                   in e for e in puller.errors()), puller.errors()
        assert (served / "model.json").read_bytes() == before
        assert registry.rollback("deeppcb") == "u1"  # loaded again from its folder
        assert card_digest(registry.detector("deeppcb", "u1").card) == card_digest(
            load_package(served).card)


def test_a_card_changed_on_disk_after_its_checks_is_not_loaded(
        weed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry reads a pulled package again from its folder: a card changed there
    after the puller checked it (signature, name, clash) was loaded and served unchecked
    (mopup, session 38). The change is made in that gap, as the clash check runs."""
    with _box_and_hub(weed, tmp_path) as box:
        box.puller.app.state.lifecycle = None  # refused before the lifecycle is asked
        assert publish(box.hub, box.key, versioned(tmp_path, "v6")).status_code == 201
        with box.hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "v6"})
            assert r.status_code == 200, r.text
        check = box.puller._check_clash

        def then_changed(m: AssignedModel, card: Any, dest: Path) -> bool:
            [folder] = (box.puller.root / ".incoming").glob("*/package")
            write_card(folder, card.model_copy(update={"thresholds": {"short": 0.99}}))
            return check(m, card, dest)

        monkeypatch.setattr(box.puller, "_check_clash", then_changed)
        pulled(box.puller)
        errors = box.puller.errors()
        assert any("v6: model deeppcb v6: its card or graph changed on disk after it was "
                   "checked" in e for e in errors), errors
        assert box.registry.models() == {} and "deeppcb" not in box.puller.state.models


def test_a_package_over_the_boxs_limit_is_not_downloaded_whole(weed: Any, tmp_path: Path) -> None:
    """``fleet.max_package_bytes`` bounds what a pull writes (a fixed 2 GiB before: a
    hostile hub could make the box write that at every pull)."""
    with _box_and_hub(weed, tmp_path, max_package_bytes=100_000) as box:
        assert publish(box.hub, box.key, versioned(tmp_path, "v9")).status_code == 201
        with box.hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "v9"})
            assert r.status_code == 200, r.text
        pulled(box.puller)
        errors = box.puller.errors()
        assert any("is over 100000 bytes" in e for e in errors), errors
        assert box.registry.models() == {}
        assert not any((box.puller.root / ".incoming").rglob("package.tar.gz"))  # removed


def test_a_full_disk_is_passing_and_named(weed: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while unpacking was taken as the package's fault: 'not applied:
    OSError' on the fleet page, and never tried again for that assignment (fleet review,
    session 32). The filesystem's failure is injected where tarfile writes a member."""
    with _box_and_hub(weed, tmp_path) as box:
        assert publish(box.hub, box.key, versioned(tmp_path, "v8")).status_code == 201
        with box.hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "v8"})
            assert r.status_code == 200, r.text

        def fails(code: int) -> Any:
            def extract(*_: Any, **__: Any) -> None:
                raise OSError(code, os.strerror(code))
            return extract

        extract = tarfile.TarFile.extract
        monkeypatch.setattr(tarfile.TarFile, "extract", fails(errno.ENOSPC))
        pulled(box.puller)
        assert box.puller.errors() == [
            "deeppcb v8 not applied now, retried next pull: the package could not be "
            "unpacked into the data folder: No space left on device"]
        # the next pull tries again: a failure of the archive's own (a file where its
        # folder goes) is then the package's, and remembered
        monkeypatch.setattr(tarfile.TarFile, "extract", fails(errno.ENOTDIR))
        pulled(box.puller)
        assert box.puller.errors() == [
            "deeppcb v8: package archive could not be unpacked (NotADirectoryError)"]
        assert box.registry.models() == {}

        # a folder the box may not write does not pass by itself: remembered and named,
        # not downloaded again at every pull (it was: up to 256 MiB a minute; review)
        monkeypatch.setattr(tarfile.TarFile, "extract", extract)  # the hub (here) unpacks
        assert publish(box.hub, box.key, versioned(tmp_path, "v7")).status_code == 201
        with box.hub.client() as admin:
            r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": "v7"})
            assert r.status_code == 200, r.text
        monkeypatch.setattr(tarfile.TarFile, "extract", fails(errno.EACCES))
        fetched = pulled(box.puller)  # what the pull the hub answered downloaded
        assert box.puller.errors() == [
            "deeppcb v7: not applied: the package could not be unpacked into the data "
            "folder: Permission denied"]
        assert len(fetched) == 2 and pulled(box.puller) == []  # the package and its signature, once


def test_a_version_pulled_before_is_activated_again_without_downloading(
        weed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's line set back to a version the box pulled, verified and unpacked before
    (still held by its registry, unloaded or loaded, with that card): the box downloaded
    the package and its signature again (leftover noted in docs/security.md, session
    42). Downloads counted, on a real box server (its lifecycle activating) and hub."""
    from .conftest import keyed, start_server

    pub = tmp_path / "k.pub.pem"
    signing.generate(tmp_path / "k.pem", pub)
    key = signing.load_private_key(tmp_path / "k.pem")
    hub, stop_hub = start_hub(weed, tmp_path, f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        for version in ("w1", "w2"):
            assert publish(hub, key, versioned(tmp_path, version)).status_code == 201
        box, stop_box = start_server(keyed(data_dir=str(tmp_path / "box"), box_id="box-a", fleet={
            "hub_url": hub.url, "token": KEYS["box-a"][1], "line": "L1",
            "trusted_keys": [str(pub)], "timeout_s": 10, "pull_interval_s": 3600}))
        try:
            puller: ModelPuller = box.app.state.fleet_models
            registry = box.app.state.registry
            # every pull the test's: the box's loop pulls once at start, which on a loaded
            # host can come after the first assignment below and take its downloads
            puller.stop()
            assert puller._thread is not None and not puller._thread.is_alive()

            def assign(version: str) -> list[str]:
                with hub.client() as admin:
                    r = admin.put("/fleet/v1/lines/L1/models/deeppcb", json={"version": version})
                    assert r.status_code == 200, r.text
                fetched = pulled(puller)  # what the pull the hub answered downloaded
                assert puller.errors() == [] and registry.models()["deeppcb"].active == version
                return fetched

            assert len(assign("w1")) == 2  # the package and its signature
            assert len(assign("w2")) == 2
            registry.unload("deeppcb", "w1", force=True)  # as keep_loaded lets it go
            assert assign("w1") == []  # from its folder, verified then: nothing fetched
            assert puller.state.models["deeppcb"].version == "w1"
            assert assign("w2") == []  # loaded still
            # the record is the box's, across a restart of the puller's state
            assert [(v.version, v.signer) for v in puller._read_verified().pulls] == [
                ("w1", puller.keys[0].id), ("w2", puller.keys[0].id)]

            # another archive under a version pulled before is downloaded and checked whole
            w1 = archive.sha256_bytes(archive.pack(puller.root / "deeppcb" / "w1"))
            other = AssignedModel(name="deeppcb", version="w1", sha256="0" * 64)
            assert puller._kept(other) is None
            assert puller._kept(other.model_copy(update={"sha256": w1})) is not None
            # as is one whose folder changed since, or whose signer is no longer trusted
            card = puller.root / "deeppcb" / "w1" / "model.json"
            kept = card.read_bytes()
            write_card(card.parent, load_package(card.parent).card.model_copy(
                update={"thresholds": {"short": 0.99}}))
            assert puller._kept(other.model_copy(update={"sha256": w1})) is None
            card.write_bytes(kept)
            trusted = puller.keys
            puller.keys = [signing.TrustedKey.of(signing.load_private_key(
                _other_key(tmp_path)).public_key())]
            assert puller._kept(other.model_copy(update={"sha256": w1})) is None
            puller.keys = trusted
            downloads: list[str] = []
            real = puller.client.download

            def counted(path: str, *args: Any) -> int:
                downloads.append(path.rsplit("/", 1)[-1])
                return real(path, *args)

            monkeypatch.setattr(puller.client, "download", counted)
            with pytest.raises(signing.SignatureError, match="the assignment says 000000"):
                puller._take(other)
            assert downloads == ["package.tar.gz"]  # fetched, then refused for its sha256
        finally:
            stop_box()
    finally:
        stop_hub()


def _other_key(tmp_path: Path) -> Path:
    signing.generate(tmp_path / "other.pem", tmp_path / "other.pub.pem")
    return tmp_path / "other.pem"
