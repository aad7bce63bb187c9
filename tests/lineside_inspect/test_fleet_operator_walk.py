"""A new fleet operator's walk (session 51): docs/fleet.md and docs/fleet/*.md followed
command by command against a real `lineside hub`, SeaweedFS and two `lineside serve`
boxes. What the walk met and these pin, each against a real hub on loopback (SQLite; its
object store unreachable: none of these calls touch it):

- a box's log held one httpx INFO line per request to the hub (its review poll: one a
  second), around the warnings docs/fleet/sync.md sends the operator to;
- ``fleet.hub_url: hub.plant:8100`` (no scheme) started, and every call failed for good
  as "hub unreachable: UnsupportedProtocol";
- a box without ``fleet.token`` started with warnings naming an HTTP header, not the
  setting to fill in;
- a hub refusing the box's assignment read (its key pinned to another line, another box
  id) was never logged by the model puller;
- ``lineside fleet publish/assign`` without LINESIDE_HUB_TOKEN said "send 'Authorization:
  Bearer KEY'", and an unreachable hub only "ConnectError".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app, configure_logging
from lineside_inspect.config import Settings, load_settings
from lineside_inspect.errors import ConfigError, HubUnavailable
from lineside_inspect.fleet.box.client import HubClient
from lineside_inspect.fleet.box.models import ModelPuller
from lineside_inspect.fleet.config import FleetSettings
from lineside_inspect.fleet.protocol import Assignment
from lineside_inspect.server.registry import Registry

from .conftest import start_server
from .test_fleet_models_hub import KEYS, Hub, pulled, start_hub

UNREACHABLE = SimpleNamespace(settings=lambda bucket: {
    "endpoint": "127.0.0.1:9", "bucket": bucket, "access_key": "a", "secret_key": "s",
    "secure": False, "timeout_s": 0.5})


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("walk")
    running, stop = start_hub(UNREACHABLE, tmp, f"sqlite:///{tmp / 'hub.db'}")
    yield running
    stop()


def test_a_box_hub_url_without_its_scheme_is_refused_when_the_config_loads(
        tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("fleet:\n  hub_url: hub.plant:8100\n  token: k\n")
    with pytest.raises(ConfigError, match=r"fleet\.hub_url: 'hub\.plant:8100': give the "
                                          r"hub's URL with its scheme"):
        load_settings(config)
    assert FleetSettings(hub_url="https://hub.plant:8100").hub_url == "https://hub.plant:8100"
    # a password in it is not echoed, with no scheme to find it by either
    config.write_text("fleet:\n  hub_url: 'box:s3cret@hub.plant:8100'\n  token: k\n")
    with pytest.raises(ConfigError, match=r"'\*\*\*@hub\.plant:8100': give") as refused:
        load_settings(config)
    assert "s3cret" not in str(refused.value)


def test_the_serve_log_leaves_each_hub_request_out(hub: Hub,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    noisy = {n: logging.getLogger(n).level for n in ("httpx", "httpcore")}
    configure_logging()
    caplog.set_level(logging.INFO)
    client = HubClient(FleetSettings(hub_url=hub.url, token=KEYS["box-a"][1]),  # type: ignore[arg-type]
                       "box-a")
    try:
        assert client.get("/fleet/v1/boxes/box-a/assignment", Assignment,
                          {"line": "L1"}).line == "L1"
    finally:
        client.close()
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
    assert not [r for r in caplog.records if r.getMessage().startswith("HTTP Request")]
    assert logging.getLogger("lineside.fleet").isEnabledFor(logging.INFO)


def test_a_box_without_its_token_says_which_setting_to_fill_in(
        hub: Hub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    box, stop = start_server(Settings(models=[], data_dir=str(tmp_path / "box"),
                                      box_id="box-a", fleet={"hub_url": hub.url}))  # type: ignore[arg-type]
    forwarding = box.app.state.forwarder is not None  # the box serves and forwards on
    stop()
    assert forwarding
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("fleet.token is not set" in m and "LINESIDE_FLEET__TOKEN" in m for m in said), said


def test_a_refused_assignment_read_is_logged_once(hub: Hub, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    fleet = FleetSettings(hub_url=hub.url, token=KEYS["box-a"][1], line="L1",  # type: ignore[arg-type]
                          trusted_keys=["mr4L9mg/rFKGdSE5T35g88aWfknABHKEbvJpg4kA+Ic="])
    client = HubClient(fleet, "box-z")  # box-a's key, another box id
    puller = ModelPuller(SimpleNamespace(state=SimpleNamespace(
        registry=Registry(device="cpu", threads=1))),
        Settings(data_dir=str(tmp_path / "box"), fleet=fleet), client)
    caplog.set_level(logging.INFO)
    try:
        pulled(puller)
        pulled(puller)
    finally:
        client.close()
    # (but a try the hub did not answer in time, which says so and is tried again)
    said = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "lineside.fleet.models"
            and not r.getMessage().endswith("; serving what the box has")]
    assert len(said) == 1, said
    assert "it may not speak for box 'box-z'" in said[0]
    assert "nothing is pulled until that is fixed" in said[0]


def test_fleet_assign_says_which_token_is_missing_and_why_the_hub_is_unreachable(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LINESIDE_HUB_TOKEN", raising=False)
    assign = ["fleet", "assign", "--line", "L1", "--model", "m", "--version", "1", "--hub"]
    out: Any = CliRunner().invoke(app, [*assign, hub.url])
    assert out.exit_code == 2, out.output
    assert "no admin key given: pass --token KEY or set LINESIDE_HUB_TOKEN" in out.output
    assert "Traceback" not in out.output
    down = CliRunner().invoke(app, [*assign, "http://127.0.0.1:9", "--token", "k"])
    assert down.exit_code == 2, down.output
    assert "hub unreachable at http://127.0.0.1:9/fleet/v1/lines/L1/models/m: ConnectError (" \
        in down.output
    assert "refused" in down.output.lower(), down.output


@pytest.mark.parametrize(("url", "said"), [
    # a password whose '@' lies past the 80 characters shown was echoed: cut, then hidden
    ("https://a-rather-long-box-user-name-on-the-proxy:s3cret-s3cret-s3cret-s3cret@hub:abc",
     "not a valid URL (Invalid port"),
    ("https://", "names no host"),                       # no call reaches a host of ''
    ("https://hub .plant:8100", "space or control"),     # host 'hub%20.plant'
    ("https://hub.plant:99999", "port 99999 is not 1-65535"),
    ("https://hub.plant:8100?site=a", "query or fragment"),  # paths went after the query
])
def test_a_hub_url_no_call_can_reach_is_refused_without_its_password(
        tmp_path: Path, url: str, said: str) -> None:
    """Session 51, attacker review: each of these loaded, and every call to the hub then
    failed for good (or went to a wrong URL); an invalid one echoed a long password."""
    config = tmp_path / "serve.yaml"
    config.write_text(f"fleet:\n  hub_url: '{url}'\n  token: k\n")
    with pytest.raises(ConfigError, match=r"fleet\.hub_url: ") as refused:
        load_settings(config)
    assert said in str(refused.value) and "s3cret" not in str(refused.value)
    out: Any = CliRunner().invoke(app, ["fleet", "assign", "--line", "L1", "--model", "m",
                                        "--version", "1", "--token", "k", "--hub", url])
    assert out.exit_code == 2 and said in out.output, out.output
    assert "s3cret" not in out.output and "Traceback" not in out.output


def test_a_password_in_the_hub_url_is_in_no_message(caplog: pytest.LogCaptureFixture) -> None:
    """A hub behind a proxy taking user:password@: each "hub unreachable" (the box's
    status, its log) and ``fleet assign``'s message showed the password."""
    url = "http://box:s3cret@127.0.0.1:9"
    client = HubClient(FleetSettings(hub_url=url, token="k"), "box-a")  # type: ignore[arg-type]
    try:
        with pytest.raises(HubUnavailable, match=r"hub http://box:\*\*\*@127\.0\.0\.1:9 "
                                                 r"unreachable") as down:
            client.request("GET", "/fleet/v1/ping")
    finally:
        client.close()
    assert "s3cret" not in str(down.value)
    out: Any = CliRunner().invoke(app, ["fleet", "assign", "--line", "L1", "--model", "m",
                                        "--version", "1", "--token", "k", "--hub", url])
    assert out.exit_code == 2 and "hub unreachable at http://box:***@127.0.0.1:9/" \
        in out.output, out.output
    assert "s3cret" not in out.output
