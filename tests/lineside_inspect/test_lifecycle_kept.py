"""A standalone server keeps what an admin loaded and activated over the API across a
restart (``<data_dir>/lifecycle/models.json``; session 47): the line does not go back to
the config's version after a power cycle, and what cannot be restored is said, not
loaded blindly."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lineside_inspect.lifecycle.config import LifecycleSettings
from lineside_inspect.lifecycle.kept import STATE_FILE, KeptModels, KeptPackage, KeptState
from lineside_inspect.lifecycle.manager import Lifecycle
from lineside_inspect.package import card_digest, load_package
from lineside_inspect.server.registry import Registry

from .conftest import MODEL, keyed, start_server
from .test_lifecycle_api import _golden_from_reviews

KEPT = "models kept across a restart"


def _package(root: Path, version: str, threshold: float | None = None) -> Path:
    """models/deeppcb/1 as ``version`` under ``root`` (another threshold: another card)."""
    dst = root / "deeppcb" / version
    shutil.copytree(MODEL, dst)
    card = json.loads((dst / "model.json").read_text())
    card["version"] = version
    if threshold is not None:
        card["thresholds"] = dict.fromkeys(card["thresholds"], threshold)
    (dst / "model.json").write_text(json.dumps(card))
    return dst


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "roots"
    _package(root, "2")
    _package(root, "3")
    return root


def _kw(tmp_path: Path, roots: Path, **more: Any) -> dict[str, Any]:
    return {"model_roots": [str(roots)], "data_dir": str(tmp_path / "data"), **more}


def _run(kw: dict[str, Any], body: Callable[[Any], None]) -> None:
    srv, stop = start_server(keyed(**kw))
    try:
        body(srv)
    finally:
        stop()


def _models(srv: Any) -> dict[str, Any]:
    with srv.client("admin") as admin:
        return {m["name"]: m for m in admin.get("/v1/models").json()}


def _last_audit(srv: Any) -> dict[str, Any]:
    with srv.client("reviewer") as rev:
        item: dict[str, Any] = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][0]
        return item


def _state(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tmp_path / "data" / STATE_FILE).read_text())
    return doc


def test_a_promotion_over_the_api_survives_a_restart(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A promotion over the API survives a restart, and so does its rollout watch, cut
    short by the restart: watched again, as the promotion recorded it, counted afresh (it
    judged unwatched until the next promotion)."""
    kw = _kw(tmp_path, roots, store_pass_rate=1.0)
    promoted: dict[str, Any] = {}

    def before(srv: Any) -> None:
        with srv.client("line") as line, srv.client("reviewer") as rev, \
                srv.client("admin") as admin:
            _golden_from_reviews(line, rev, admin, "deeppcb")
            r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / "2")})
            assert r.status_code == 200 and r.json()["active"] == "2", r.text
            r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / "3"),
                                               "activate": False})
            assert r.status_code == 200 and r.json()["active"] == "2", r.text
            r = admin.post("/v1/models/deeppcb/promote",
                           json={"version": "3", "golden": "deeppcb"})
            assert r.status_code == 200, r.text
            promoted.update(r.json()["rollout"])
            assert (promoted["previous"], promoted["state"]) == ("2", "watching")
            # what the watch needs is recorded with the promotion
            entry = _last_audit(srv)
            assert entry["action"] == "promote" and entry["details"]["rollout"] == {
                "previous": "2", "recipe": promoted["recipe"],
                "gate_report_id": promoted["gate_report_id"]}
            promoted["audit_id"] = entry["id"]

    _run(kw, before)
    state = _state(tmp_path)
    assert state["active"] == {"deeppcb": "3"}
    assert {(p["version"], p["path"]) for p in state["packages"]} == {
        ("2", str((roots / "deeppcb" / "2").resolve())),
        ("3", str((roots / "deeppcb" / "3").resolve()))}
    caplog.set_level(logging.INFO, logger="lineside.lifecycle")

    def after(srv: Any) -> None:
        # the start says what judges instead of the config's version, and the way back
        # (new-user review, session 47)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(KEPT)]
        assert len(said) == 1 and "active again: deeppcb 3 (in place of the config's 1); " \
            "loaded again: deeppcb 3, deeppcb 2. They were made active over the API before " \
            "the restart; to judge with the config's versions again, activate them (POST " \
            "/v1/models/NAME/activate)" in said[0], said
        model = _models(srv)["deeppcb"]
        assert model["active"] == "3"  # not the config's 1
        assert {v["version"] for v in model["versions"]} == {"1", "2", "3"}
        with srv.client("reviewer") as rev:
            resumed, last = rev.get("/v1/audit", params={"model": "deeppcb"}).json()["items"][:2]
            # the watch the restart cut short, watched again from it
            watch = rev.get("/v1/models/deeppcb/rollout").json()
        # recorded as the server's restore; no startup entry after it
        assert (last["action"], last["actor"], last["version"]) == ("restore", "lineside", "3")
        assert "restored" in last["reason"]
        assert (resumed["action"], resumed["actor"], resumed["version"]) == (
            "rollout_resumed", "lineside", "3")
        assert f"audit entry {promoted['audit_id']}" in resumed["reason"]
        assert resumed["details"]["promote_audit_id"] == promoted["audit_id"]
        assert {k: watch[k] for k in ("state", "version", "previous", "recipe",
                                      "gate_report_id", "actor", "inspections")} == {
            "state": "watching", "version": "3", "previous": "2",
            "recipe": promoted["recipe"], "gate_report_id": promoted["gate_report_id"],
            "actor": "lineside", "inspections": 0}
        with srv.client("admin") as admin:  # what the API changes after it is kept too
            r = admin.post("/v1/models/deeppcb/rollback")
            assert r.status_code == 200 and r.json()["active"] == "1", r.text
            r = admin.delete("/v1/models/deeppcb/versions/3")
            assert r.status_code == 200, r.text

    caplog.set_level(logging.INFO, logger="lineside.lifecycle")
    _run(kw, after)
    state = _state(tmp_path)
    assert state["active"] == {"deeppcb": "1"}
    assert [p["version"] for p in state["packages"]] == ["2"]  # 3 unloaded: dropped
    assert "rollout watch resumed: deeppcb 3, promoted by admin" in caplog.text


def test_a_package_removed_or_changed_is_refused_and_said(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    kw = _kw(tmp_path, roots)

    def before(srv: Any) -> None:
        with srv.client("admin") as admin:
            for version in ("2", "3"):
                r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / version)})
                assert r.status_code == 200, r.text

    _run(kw, before)
    assert _state(tmp_path)["active"] == {"deeppcb": "3"}
    shutil.rmtree(roots / "deeppcb" / "3")
    card = json.loads((roots / "deeppcb" / "2" / "model.json").read_text())
    card["thresholds"] = dict.fromkeys(card["thresholds"], 0.9)  # recalibrated by hand
    (roots / "deeppcb" / "2" / "model.json").write_text(json.dumps(card))
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")

    def after(srv: Any) -> None:
        model = _models(srv)["deeppcb"]
        assert (model["active"], [v["version"] for v in model["versions"]]) == ("1", ["1"])
        last = _last_audit(srv)  # the startup entry says the log's last activation is not it
        assert (last["action"], last["actor"], last["version"]) == ("startup", "lineside", "1")
        assert "the last activation recorded was 3" in last["reason"]

    _run(kw, after)
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert f"deeppcb 3 ({(roots / 'deeppcb' / '3').resolve()}), loaded over the API before, " \
           "is not loaded again" in said
    assert "deeppcb 2" in said and "its card or graph changed since it was loaded" in said
    assert "deeppcb 3, made active over the API before the restart, is not active again: " \
           "its package was not loaded; deeppcb 1 judges" in said
    assert _state(tmp_path)["packages"] == [] and _state(tmp_path)["active"] == {}


def test_the_config_wins_when_its_models_changed(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    def before(srv: Any) -> None:
        with srv.client("admin") as admin:
            r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / "2")})
            assert r.status_code == 200 and r.json()["active"] == "2", r.text

    _run(_kw(tmp_path, roots), before)
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    # the operator names another version in the config since: it judges
    changed = _kw(tmp_path, roots, models=[str(roots / "deeppcb" / "3")])
    _run(changed, lambda srv: _check_only(srv, "3"))
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "the config's models changed since" in said and "(deeppcb 2) are not restored" in said
    folder = tmp_path / "data" / "lifecycle"
    assert json.loads((folder / "models.json.config-changed").read_text())["active"] == {
        "deeppcb": "2"}  # kept aside, not lost
    assert not (folder / "models.json").exists()


def _other(root: Path, *versions: str) -> None:
    """models/deeppcb/1 as model ``other``, each of ``versions``, under ``root``."""
    for version in versions:
        dst = root / "other" / version
        shutil.copytree(MODEL, dst)
        card = json.loads((dst / "model.json").read_text())
        (dst / "model.json").write_text(json.dumps({**card, "name": "other",
                                                    "version": version}))


def test_the_config_wins_only_for_the_model_whose_entry_changed(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The config's whole ``models`` was one digest: an operator changing model ``other``'s
    version in the config undid an admin's activation of deeppcb too (the version rolled
    back to, say, for escaping defects) at the next restart, with a WARNING about the
    config alone (session 49). Judged per model now: ``other``'s config entry changed, the
    config wins for it; deeppcb's did not, its activation over the API stands."""
    _other(roots, "1", "2", "3")

    def before(srv: Any) -> None:
        with srv.client("admin") as admin:
            for path in (roots / "deeppcb" / "2", roots / "other" / "3"):
                r = admin.post("/v1/models", json={"path": str(path)})
                assert r.status_code == 200 and r.json()["active"] == path.name, r.text

    _run(_kw(tmp_path, roots, models=[str(MODEL), str(roots / "other" / "1")]), before)
    assert _state(tmp_path)["active"] == {"deeppcb": "2", "other": "3"}
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")

    def after(srv: Any) -> None:
        models = _models(srv)
        assert models["deeppcb"]["active"] == "2"  # not the config's 1
        assert (models["other"]["active"], [v["version"] for v in models["other"]["versions"]]
                ) == ("2", ["2"])  # the config's new version judges, 3 is not loaded

    # the operator names another version of ``other`` in the config since
    _run(_kw(tmp_path, roots, models=[str(MODEL), str(roots / "other" / "2")]), after)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(KEPT)]
    assert len(said) == 1, said
    assert "(other's entries changed in the config): the config's versions judge for other, " \
        "the versions activated over the API (other 3) are not restored and the packages " \
        "loaded over the API for them (other 3) are not loaded again" in said[0]
    assert "the other models' are restored; the file as it was is kept as models.json.config-changed" \
        in said[0] and "deeppcb" not in said[0]
    folder = tmp_path / "data" / "lifecycle"
    assert json.loads((folder / "models.json.config-changed").read_text())["active"] == {
        "deeppcb": "2", "other": "3"}  # kept aside, not lost
    state = _state(tmp_path)
    assert (state["active"], [p["version"] for p in state["packages"]]) == ({"deeppcb": "2"}, ["2"])


def test_a_model_added_to_or_removed_from_the_config_is_not_restored(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model loaded over the API and added to the config since: the config's version
    judges. A model removed from the config: its version activated over the API is not
    restored (nor loaded). deeppcb, whose entry did not change, keeps its own."""
    _other(roots, "1", "2")
    _other(tmp_path / "third", "1")
    third = tmp_path / "third" / "other" / "1"
    card = json.loads((third / "model.json").read_text())
    (third / "model.json").write_text(json.dumps({**card, "name": "third"}))
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")

    def state(kept: KeptModels) -> KeptState:
        entries = dict(kept.config_entries())
        entries["third"] = "0" * 64  # named by the config when written, not now
        del entries["other"]  # loaded over the API when written, named by the config now
        return KeptState(config_models=kept.digest, config_entries=entries,
                         active={"deeppcb": "2", "other": "2", "third": "1"},
                         packages=[_entry(roots / "deeppcb" / "2"),
                                   _entry(roots / "other" / "2")])

    registry, path, restored = _restoring(tmp_path, roots, state,
                                          more=[roots / "other" / "1"])
    assert restored == ["deeppcb 2"]
    assert {m: (s.active, sorted(s.versions)) for m, s in registry.models().items()} == {
        "deeppcb": ("2", ["1", "2"]), "other": ("1", ["1"])}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "(other was added to the config; third was removed from the " \
        "config): the config's versions judge for other, third, the versions activated over " \
        "the API (other 2, third 1) are not restored" in said[0], said
    written = KeptState.model_validate_json(path.read_bytes())
    assert written.active == {"deeppcb": "2"} and written.config_entries is not None
    assert set(written.config_entries) == {"deeppcb", "other"}
    assert path.with_name("models.json.config-changed").exists()


def test_an_older_releases_file_is_restored_only_when_the_whole_config_is_unchanged(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file written before session 49 keeps one digest of the config's whole ``models``
    and none per model: when it differs, which model changed is unknown, so nothing is
    restored (as that release did) and the file is set aside."""
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    doc = {"format": 1, "config_models": "0" * 64, "written_at": "",
           "packages": [_entry(roots / "deeppcb" / "2").model_dump(mode="json")],
           "active": {"deeppcb": "2"}}
    registry, path, restored = _restoring(
        tmp_path, roots, lambda digest: KeptState.model_validate(doc))
    assert restored == [] and registry.models()["deeppcb"].active == "1"
    assert "kept no digest per model" in caplog.text and "(deeppcb 2) are not restored" \
        in caplog.text
    assert not path.exists() and json.loads(path.with_name(
        "models.json.config-changed").read_text())["active"] == {"deeppcb": "2"}


def _check_only(srv: Any, version: str) -> None:
    model = _models(srv)["deeppcb"]
    assert (model["active"], [v["version"] for v in model["versions"]]) == (version, [version])


def test_a_damaged_state_file_is_set_aside_and_the_server_starts(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "data" / STATE_FILE
    state.parent.mkdir(parents=True)
    state.write_text('{"format": 1, "config_models": ')  # cut off by a power cut
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    _run(_kw(tmp_path, roots), lambda srv: _check_only(srv, "1"))
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "models.json does not read (ValidationError)" in said
    assert "the file is kept as models.json.bad" in said
    assert state.with_name("models.json.bad").read_text() == '{"format": 1, "config_models": '


def test_a_kept_path_must_still_lie_inside_model_roots(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The state file is a trust boundary: a path written into it by hand (or a root
    taken out of model_roots since, or a link inside one pointed elsewhere) loads
    nothing, whatever card digests it claims."""
    inside, outside = tmp_path / "roots", tmp_path / "outside"
    away = _package(outside, "9")
    _package(inside, "4")
    (inside / "deeppcb" / "5").symlink_to(away, target_is_directory=True)
    card = load_package(away).card

    def entry(version: str, path: Path) -> KeptPackage:
        return KeptPackage(name="deeppcb", version=version, path=str(path),
                           card_digest=card_digest(card), graph_sha256=card.sha256)

    registry = Registry(device="cpu", threads=1)
    registry.load_model(MODEL)
    path = tmp_path / "data" / STATE_FILE
    kept = KeptModels(path, models=[str(MODEL)], roots=[inside.resolve()], registry=registry)
    path.parent.mkdir(parents=True)
    path.write_text(KeptState(
        config_models=kept.digest, active={"deeppcb": "9"},
        packages=[entry("9", away), entry("9", inside / "deeppcb" / "5"),
                  entry("9", inside / ".." / "outside" / "deeppcb" / "9")]).model_dump_json())
    lc = Lifecycle(LifecycleSettings(), registry=registry, data_dir=tmp_path / "data")
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    try:
        assert kept.restore(lc) == []
    finally:
        lc.close()
    assert set(registry.models()["deeppcb"].versions) == {"1"}
    refused = [r.getMessage() for r in caplog.records if "is not loaded again" in r.getMessage()]
    assert len(refused) == 3 and all("outside the server's model_roots" in m for m in refused)
    assert KeptState.model_validate_json(path.read_bytes()).packages == []


def test_an_automatic_rollback_is_kept(tmp_path: Path) -> None:
    """A restart after the watch rolled a promotion back must not bring the rejected
    version back: the version it went back to is kept."""
    from datetime import UTC, datetime

    from lineside_inspect.lifecycle.rollout import Watch

    from .test_lifecycle_records import _lifecycle

    lc, registry, store = _lifecycle(tmp_path)
    path = tmp_path / STATE_FILE
    lc.kept = KeptModels(path, models=[str(MODEL)], roots=[MODEL.parents[1]], registry=registry)
    try:
        lc.activate("deeppcb", "1-int8", actor="admin", action="promote")
        lc.kept.activated("deeppcb", "1-int8")  # as the promote route does
        assert KeptState.model_validate_json(path.read_bytes()).active == {"deeppcb": "1-int8"}
        watch = Watch("deeppcb", "1-int8", "1", None, datetime.now(UTC), "admin", None, 0, 0)
        assert lc._auto_rollback(watch, "fail rate") is True
        state = KeptState.model_validate_json(path.read_bytes())
        assert state.active == {"deeppcb": "1"}
        assert [p.version for p in state.packages] == ["1-int8"]  # loaded beside, still
    finally:
        lc.close()
        store.close()


@pytest.mark.parametrize("disk", ["written", "full", "audit lost"])
def test_an_automatic_rollback_to_a_version_loaded_over_the_api_is_restored(
        tmp_path: Path, roots: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, disk: str) -> None:
    """A model only from the API (the config names none): 2 loaded and active, 3 promoted
    over it and rolled back by its watch; a restart judges with 2 again, 3 loaded beside
    (session 48, rollback pass: checked, it held). ``full``: the file could not be written
    at the rollback (it still names 3): 3, loaded first, judged again although the restore
    said the rollback stood; the audit log's last activation wins (session 48). ``audit
    lost``: the file written, the rollback's audit entry not (the database failing then; the
    rollback stands): the audit log's last activation, the promotion of 3 from 2, made the
    rejected 3 judge again and its watch resume; the file's 2 judges (adversarial read)."""
    import errno
    from datetime import UTC, datetime

    from sqlalchemy.exc import OperationalError

    from lineside_inspect.lifecycle import kept as kept_module
    from lineside_inspect.lifecycle.rollout import Watch

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with _started(tmp_path, [], roots=roots.resolve()) as (lc, registry, kept):
        for version in ("2", "3"):
            loaded = registry.load(roots / "deeppcb" / version, activate=False)
            if loaded.first:
                lc.first_version(loaded.detector, actor="admin")
            kept.loaded("deeppcb", version)  # as POST /v1/models does
        lc.activate("deeppcb", "3", actor="admin", action="promote", force=True,
                    reason="watched")
        kept.activated("deeppcb", "3")
        watch = Watch("deeppcb", "3", "2", None, datetime.now(UTC), "admin", None, 0, 0)
        with monkeypatch.context() as m:
            if disk == "full":
                m.setattr(kept_module, "write_atomic", full)
            if disk == "audit lost":
                # 2 shadowed meanwhile: active again, its shadow compares nothing (stopped
                # as by a recorded rollback; it ran on, the audit's failure returning early)
                from lineside_inspect.lifecycle.shadow import ShadowRunner

                lc.shadow = ShadowRunner(lc.settings.shadow, lc.records, lc.store)
                lc.start_shadow("deeppcb", "2", sample_rate=1.0, actor="admin")

                def down(**kw: object) -> None:
                    raise OperationalError("INSERT INTO audit", {}, Exception("disk I/O error"))

                m.setattr(lc.records, "audit", down)
                # it stands, and its watch ends rolled back (raised, the watch's next check
                # found 3 no longer active and recorded "stopped ... not rolled back")
                assert lc._auto_rollback(watch, "fail rate") is True
                assert registry.models()["deeppcb"].active == "2"
                assert "rolled back to 2, not in the audit log (OperationalError)" in \
                    caplog.text
                assert lc.shadow is not None and lc.shadow.session("deeppcb") is None
            else:
                assert lc._auto_rollback(watch, "fail rate") is True
        if disk == "audit lost":
            assert lc.records.last_activation("deeppcb")["action"] == "promote"
    path = tmp_path / STATE_FILE
    assert KeptState.model_validate_json(path.read_bytes()).active == {
        "deeppcb": "3" if disk == "full" else "2"}
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    with _started(tmp_path, [], roots=roots.resolve()) as (lc, registry, kept):
        assert kept.restore(lc) == ["deeppcb 2"]
        slot = registry.models()["deeppcb"]
        assert (slot.active, sorted(slot.versions)) == ("2", ["2", "3"])
        assert lc.records.last_activation("deeppcb")["action"] == "restore"
    # written again where it disagreed: the store's
    assert KeptState.model_validate_json(path.read_bytes()).active == {"deeppcb": "2"}
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if disk == "full":
        assert len(said) == 1 and said[0].startswith(
            f"{KEPT}: {path} names deeppcb 3 active, but the audit log's "
            "last activation of deeppcb is 2 (auto_rollback by ")
        assert "deeppcb 2 judges, deeppcb 3 is loaded inactive" in said[0]
    elif disk == "audit lost":
        assert len(said) == 1 and "last activation of deeppcb is promote 3 from it (promote " \
            "by admin), and no rollback to 2 is recorded after it" in said[0], said
        assert "deeppcb 2 judges, deeppcb 3 does not" in said[0]
    else:
        assert said == []


def test_a_hand_rollback_that_cannot_be_recorded_does_not_stand(
        tmp_path: Path, roots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin's rollback whose audit entry cannot be written (the database locked) is
    undone, as an activation is: 503 and nothing changed. It stood and answered 5xx: the
    admin, told it failed, rolled back again (two back), and the restart restored the
    version rolled back from, the file and the audit log both naming it (session 49)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from lineside_inspect.lifecycle.records import Records

    def locked(self: Records, **_: Any) -> None:
        raise OperationalError("INSERT audit", {}, sqlite3.OperationalError("database is locked"))

    def body(srv: Any) -> None:
        with srv.client("admin") as admin:
            r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / "2")})
            assert r.status_code == 200 and r.json()["active"] == "2", r.text
            with monkeypatch.context() as m:
                m.setattr(Records, "audit", locked)
                r = admin.post("/v1/models/deeppcb/rollback", params={"from": "2"})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            slot = srv.app.state.registry.models()["deeppcb"]
            assert (slot.active, slot.history) == ("2", ["1"])  # as it was: a retry goes once
            r = admin.post("/v1/models/deeppcb/rollback", params={"from": "2"})
            assert r.status_code == 200 and r.json()["active"] == "1", r.text
        assert _last_audit(srv)["action"] == "rollback"

    _run(_kw(tmp_path, roots), body)
    assert _state(tmp_path)["active"] == {"deeppcb": "1"}


def test_a_version_the_audit_log_activated_after_the_kept_one_and_not_kept_loads_none(
        tmp_path: Path, roots: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A model only from the API: 2 kept, then 3 loaded and activated on a full disk (the
    file still names 2 and keeps 3 not). 2, loaded first, judged again at the restart
    although the audit log made 3 active after it: a model the record replaced loads
    nothing, said (session 48)."""
    import errno

    from lineside_inspect.lifecycle import kept as kept_module

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with _started(tmp_path, [], roots=roots.resolve()) as (lc, registry, kept):
        loaded = registry.load(roots / "deeppcb" / "2", activate=False)
        kept.loaded("deeppcb", "2")  # as POST /v1/models does
        lc.first_version(loaded.detector, actor="admin")
        kept.activated("deeppcb", "2")
        with monkeypatch.context() as m:
            m.setattr(kept_module, "write_atomic", full)
            registry.load(roots / "deeppcb" / "3", activate=False)
            kept.loaded("deeppcb", "3")
            lc.activate("deeppcb", "3", actor="admin", force=True, reason="trial")
            kept.activated("deeppcb", "3")
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    with _started(tmp_path, [], roots=roots.resolve()) as (lc, registry, kept):
        assert kept.restore(lc) == []
        assert "deeppcb" not in registry.models()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "names deeppcb 2 active, but the audit log's last activation of deeppcb is 3 " \
           "(activate by admin), after it" in said
    assert "3 is not kept here, and deeppcb's kept versions are not loaded" in said


def test_a_version_activated_after_the_kept_one_stands(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A version made active by what does not write the file (a fleet box's pull) after
    the admin's is the audit log's last activation: the kept one is not restored over it."""
    int8 = MODEL.parent / "1-int8"

    with _started(tmp_path, [MODEL], roots=MODEL.parents[1]) as (lc, registry, kept):
        registry.load(int8, activate=False)
        lc.activate("deeppcb", "1-int8", actor="admin")
        kept.activated("deeppcb", "1-int8")  # as the activate route does
        lc.activate("deeppcb", "1", actor="fleet")  # a pull: not through the API's routes
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    with _started(tmp_path, [MODEL], roots=MODEL.parents[1]) as (lc, registry, kept):
        assert kept.restore(lc) == []  # (the restart)
        slot = registry.models()["deeppcb"]
        assert (slot.active, set(slot.versions)) == ("1", {"1", "1-int8"})
    assert "deeppcb 1-int8, made active over the API before the restart, is not active " \
           "again: deeppcb 1 was activated after it (activate by fleet), and stands" in \
           "\n".join(r.getMessage() for r in caplog.records)


def _restoring(tmp_path: Path, roots: Path, state: Callable[[Any], KeptState],
               more: Sequence[Path] = ()) -> tuple[Registry, Path, list[str]]:
    """``state`` (given the config's digest, or the :class:`KeptModels` when it takes
    ``kept``) as a hand-written file, restored once on a server whose config loads
    models/deeppcb/1 and ``more`` (no store): the registry and what was restored."""
    registry = Registry(device="cpu", threads=1)
    for model in (MODEL, *more):
        registry.load_model(model)
    path = tmp_path / "data" / STATE_FILE
    kept = KeptModels(path, models=[str(m) for m in (MODEL, *more)], roots=[roots.resolve()],
                      registry=registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    given = kept if "kept" in inspect.signature(state).parameters else kept.digest
    path.write_text(state(given).model_dump_json())
    lc = Lifecycle(LifecycleSettings(), registry=registry, data_dir=tmp_path / "data")
    try:
        return registry, path, kept.restore(lc)
    finally:
        lc.close()


def _entry(path: Path) -> KeptPackage:
    card = load_package(path).card
    return KeptPackage(name=card.name, version=card.version, path=str(path.resolve()),
                       card_digest=card_digest(card), graph_sha256=card.sha256)


def test_a_restore_that_changes_nothing_writes_nothing(tmp_path: Path, roots: Path) -> None:
    """An SD card box: the file is written when the API changes something, not at every
    start (session 47, attack pass: it was rewritten whole at each one)."""
    two = roots / "deeppcb" / "2"
    registry, path, restored = _restoring(tmp_path, roots, lambda digest: KeptState(
        config_models=digest, active={"deeppcb": "2"}, packages=[_entry(two)]))
    assert restored == ["deeppcb 2"] and registry.models()["deeppcb"].active == "2"
    before = path.read_bytes()
    assert json.loads(before)["written_at"] == ""  # as written by hand: not written again
    assert path.read_bytes() == before


def test_a_package_listed_twice_loads_once_and_the_file_keeps_one(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    two = roots / "deeppcb" / "2"
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    _, path, restored = _restoring(tmp_path, roots, lambda digest: KeptState(
        config_models=digest, active={"deeppcb": "2"}, packages=[_entry(two)] * 2))
    assert restored == ["deeppcb 2"]
    said = [r.getMessage() for r in caplog.records]
    # said once, for what it is (it said "the config loads that version now", every start)
    assert said == [f"{KEPT}: deeppcb 2 is listed more than once: loaded from one entry "
                    f"only ({two.resolve()})"]
    assert KeptState.model_validate_json(path.read_bytes()).packages == [_entry(two)]


def test_a_file_of_a_million_models_is_set_aside_not_told_one_by_one(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A hand-written ``active`` of many models each said "not active again" (a WARNING
    per entry at start: 10^6 lines); beyond MAX_PACKAGES the file is not the server's."""
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    registry, path, restored = _restoring(tmp_path, roots, lambda digest: KeptState.model_construct(
        config_models=digest, active={f"m{i}": "1" for i in range(1001)}))
    assert restored == [] and registry.models()["deeppcb"].active == "1"
    assert len(caplog.records) == 1 and "models.json does not read (ValidationError)" in \
        caplog.records[0].getMessage()
    assert path.with_name("models.json.bad").exists() and not path.exists()


def test_a_kept_path_with_a_control_character_is_not_read(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A path with a newline was repeated raw in the start's WARNINGs (a forged log line);
    a NUL reached confine. The API's paths have none: the file is not the server's."""
    forged = str(roots / "deeppcb" / "2") + "\nERROR lineside: forged\x00"
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    registry, path, restored = _restoring(tmp_path, roots, lambda digest: KeptState(
        config_models=digest, packages=[_entry(roots / "deeppcb" / "2").model_copy(
            update={"path": forged})]))
    assert restored == [] and set(registry.models()["deeppcb"].versions) == {"1"}
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "models.json does not read (ValidationError)" in said[0]
    assert "\n" not in said[0] and path.with_name("models.json.bad").exists()


def test_a_new_models_other_version_does_not_judge_in_place_of_the_one_kept(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model new to the server: 1 loaded first (active), 2 loaded beside (or refused by
    its gate). 1's package gone at the restart: 2, loaded first, became active as it
    loaded, never admitted, without a word but a ``startup`` entry."""
    for version in ("1", "2"):
        dst = roots / "other" / version
        shutil.copytree(MODEL, dst)
        card = json.loads((dst / "model.json").read_text())
        (dst / "model.json").write_text(json.dumps({**card, "name": "other",
                                                    "version": version}))
    entries = [_entry(roots / "other" / v) for v in ("1", "2")]
    shutil.rmtree(roots / "other" / "1")
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    registry, path, restored = _restoring(tmp_path, roots, lambda digest: KeptState(
        config_models=digest, active={"other": "1"}, packages=entries))
    assert restored == [] and "other" not in registry.models()
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "other 2 (" in said and "other is new to this server and its version kept " \
        "active (1) was not loaded again: this one would judge in its place without " \
        "having been admitted" in said
    assert KeptState.model_validate_json(path.read_bytes()).packages == []


def test_a_restore_past_the_gate_is_said_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A version forced over the API (or whose pass no longer admits, e.g. a
    lifecycle.gate.golden set named since) comes back as ``force_restore``: the start's
    log said only "active again" (session 47, attack pass)."""
    def started() -> contextlib.AbstractContextManager[tuple[Lifecycle, Registry, KeptModels]]:
        return _started(tmp_path, [MODEL, MODEL.parent / "1-int8"], roots=MODEL.parents[1],
                        settings=LifecycleSettings(gate={"require_gate": True}))

    with started() as (lc, registry, kept):
        lc.activate("deeppcb", "1-int8", actor="admin", force=True, reason="trial")
        kept.activated("deeppcb", "1-int8")  # as the activate route does
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    with started() as (lc, registry, kept):  # the restart
        assert kept.restore(lc) == ["deeppcb 1-int8"]
        assert registry.models()["deeppcb"].active == "1-int8"
        assert lc.records.last_activation("deeppcb")["action"] == "force_restore"  # type: ignore[index]
    assert "deeppcb 1-int8 judges again past its gate, which would refuse it now " \
           "(recorded as force_restore" in "\n".join(r.getMessage() for r in caplog.records)


WATCHED = {"rollout": {"previous": "2", "recipe": "deeppcb", "gate_report_id": None}}


def _box(tmp_path: Path, roots: Path) -> tuple[Lifecycle, Registry, KeptModels, Any]:
    """A box whose config loads models/deeppcb/1, on a real store, with the rollout watch
    (as ``attach`` makes it); what the API loads from ``roots`` is kept."""
    from lineside_inspect.lifecycle.rollout import RolloutWatcher

    lc, registry, kept, store = _in_process(tmp_path, [MODEL], roots=roots.resolve())
    lc.rollout = RolloutWatcher(lc.settings.rollout, lc.records, lc._auto_rollback,
                                lc._watch_ended)
    return lc, registry, kept, store


@contextlib.contextmanager
def _started(tmp_path: Path, configured: list[Path], *, roots: Path,
             settings: LifecycleSettings | None = None,
             ) -> Iterator[tuple[Lifecycle, Registry, KeptModels]]:
    """:func:`_in_process`, closed (its store too) when done: one run of the server."""
    lc, registry, kept, store = _in_process(tmp_path, configured, roots=roots,
                                            settings=settings)
    try:
        yield lc, registry, kept
    finally:
        lc.close()
        store.close()


def _in_process(tmp_path: Path, configured: list[Path], *, roots: Path,
                settings: LifecycleSettings | None = None,
                ) -> tuple[Lifecycle, Registry, KeptModels, Any]:
    """A lifecycle on a real store in ``tmp_path`` whose config loads ``configured`` (the
    first active), keeping what the API loads from ``roots``: a server's start, in process
    (call again on the same folder for a restart)."""
    from lineside_inspect.lifecycle.records import Records
    from lineside_inspect.store import Store

    registry = Registry(device="cpu", threads=1)
    for i, model in enumerate(configured):
        registry.load_model(model, activate=i == 0)
    store = Store(tmp_path / "store", pass_rate=1.0)
    lc = Lifecycle(settings or LifecycleSettings(), registry=registry, data_dir=tmp_path)
    lc.store, lc._records = store, Records(store)
    lc.kept = KeptModels(tmp_path / STATE_FILE, models=[str(m) for m in configured],
                         roots=[roots], registry=registry)
    return lc, registry, lc.kept, store


@pytest.mark.parametrize("case", ["cut short", "complete", "stopped", "previous gone",
                                  "older release"])
def test_a_watch_the_restart_cut_short_is_watched_again(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    """A promotion's watch lived in memory: a power cycle during it left the promoted
    version judging unwatched. Resumed at start-up from the promotion's audit entry, only
    where its watch had not ended and the version to roll back to is loaded again."""
    lc, registry, kept, store = _box(tmp_path, roots)
    try:  # deeppcb 2 loaded and activated over the API, then 3 promoted from it
        for version in ("2", "3"):
            registry.load(roots / "deeppcb" / version, activate=False)
            kept.loaded("deeppcb", version)
        lc.activate("deeppcb", "2", actor="admin")
        kept.activated("deeppcb", "2")
        lc.activate("deeppcb", "3", actor="admin", action="promote",
                    details={} if case == "older release" else WATCHED)
        kept.activated("deeppcb", "3")  # as the promote route does
        assert lc.rollout is not None
        watch = lc.rollout.start(model="deeppcb", version="3", previous="2", recipe="deeppcb",
                                 actor="admin", gate_report_id=None)
        if case == "complete":  # as the watch's check ends it
            lc.rollout._end(watch, "complete", "500 inspections within the bounds")
        elif case == "stopped":
            lc.rollout.stop("deeppcb", "admin stopped it")
    finally:
        lc.close()
        store.close()
    if case == "previous gone":
        shutil.rmtree(roots / "deeppcb" / "2")
    lc, registry, kept, store = _box(tmp_path, roots)  # the restart
    caplog.set_level(logging.INFO, logger="lineside.lifecycle")
    try:
        assert kept.restore(lc) == ["deeppcb 3"]
        assert lc.rollout is not None
        resumed = lc.rollout.get("deeppcb")
        last = lc.records.audit_log(model="deeppcb", limit=1)[1][0]
        if case == "cut short":
            assert resumed is not None
            assert (resumed.state, resumed.version, resumed.previous, resumed.recipe,
                    resumed.actor, resumed.inspections) == (
                "watching", "3", "2", "deeppcb", "lineside", 0)
            assert (last["action"], last["version"]) == ("rollout_resumed", "3")
            # a second restart during the resumed watch resumes it again
            assert lc.records.open_promotion("deeppcb") is not None
        else:
            assert resumed is None and last["action"] == "restore"
    finally:
        lc.close()
        store.close()
    said = [r.getMessage() for r in caplog.records if "resum" in r.getMessage()]
    if case == "cut short":
        assert len(said) == 1 and said[0].startswith(
            "rollout watch resumed: deeppcb 3, promoted by admin (audit entry ")
    elif case == "previous gone":
        assert len(said) == 1 and "its watch cannot resume: deeppcb 2, the version to roll " \
            "back to, is not loaded" in said[0]
    elif case == "older release":
        assert len(said) == 1 and "its watch cannot resume: the promotion was recorded by " \
            "an older release" in said[0]
    else:
        assert said == []


def test_the_configs_entries_are_read_at_start_not_after_the_apis_loads(
        tmp_path: Path, roots: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Session 49, attack pass: each model's config entries were read from the registry
    the first time the file was written, after the API's first change. An admin loading a
    copy of the config's deeppcb 1 (the same card, another folder: the registry then holds
    that folder) before activating 2 left deeppcb out of the digests written, and the next
    restart, its config unchanged, said "deeppcb was added to the config" and undid the
    activation. The entries are read at start-up, before any call of the API."""
    shutil.copytree(MODEL, roots / "copy" / "1")

    def before(srv: Any) -> None:
        with srv.client("admin") as admin:
            r = admin.post("/v1/models", json={"path": str(roots / "copy" / "1"), "activate": False})
            assert r.status_code == 200, r.text
            r = admin.post("/v1/models", json={"path": str(roots / "deeppcb" / "2")})
            assert r.status_code == 200 and r.json()["active"] == "2", r.text

    kw = _kw(tmp_path, roots, models=[str(MODEL)])
    _run(kw, before)
    caplog.set_level(logging.WARNING, logger="lineside.lifecycle")
    _run(kw, lambda srv: _check_active(srv, "2"))
    assert not [r for r in caplog.records if "config's models changed" in r.getMessage()]


def _check_active(srv: Any, version: str) -> None:
    assert _models(srv)["deeppcb"]["active"] == version
