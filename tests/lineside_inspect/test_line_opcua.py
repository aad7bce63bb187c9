"""The OPC UA side of the PLC handshake against what a hostile or misconfigured peer
sends (line review, session 35): real ``asyncua`` clients against the real adapter on a
free loopback port, and the configuration checks of its certificate files."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lineside_inspect.errors import ConfigError
from lineside_inspect.line import opcua as opcua_module
from lineside_inspect.line import peer_logs
from lineside_inspect.line.config import LineSettings, OpcUaConfig
from lineside_inspect.line.opcua import OpcUaAdapter
from lineside_inspect.server.app import create_app

from .conftest import keyed
from .test_line_plc import NS, _certificate, _station

LOOPBACK = "opc.tcp://127.0.0.1:0/lineside/"


def _secured(tmp_path: Path) -> tuple[OpcUaConfig, Path, Path, Path]:
    (tmp_path / "trusted").mkdir()
    server_cert, server_key = _certificate(tmp_path, "lineside", "urn:lineside:server", server=True)
    plc_cert, plc_key = _certificate(tmp_path, "plc", "urn:plc:client", server=False)
    (tmp_path / "trusted" / "plc.der").write_bytes(plc_cert.read_bytes())
    cfg = OpcUaConfig(endpoint=LOOPBACK, certificate=str(server_cert), private_key=str(server_key),
                      trusted_certificates=str(tmp_path / "trusted"))
    return cfg, server_cert, plc_cert, plc_key


def test_a_peer_without_a_certificate_gets_no_session_on_the_unsecured_channel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncua opens a channel of policy None to anyone (discovery) and activated an
    anonymous session on it although the only endpoint is Basic256Sha256: a peer with no
    certificate wrote Trigger. Now that session is refused; the trusted PLC still works."""
    cfg, server_cert, plc_cert, plc_key = _secured(tmp_path)
    writes: list[tuple[str, str, Any]] = []

    async def rogue_session(endpoint: str) -> None:
        rogue = Client(endpoint, timeout=5)
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with rogue:  # connect: channel None, CreateSession, ActivateSession
                idx = await rogue.get_namespace_index(NS)
                await rogue.get_node(f"ns={idx};s=Stations/s1/Trigger").write_value(True)

    async def run() -> None:
        adapter = OpcUaAdapter(cfg)
        await adapter.start([_station()], lambda *w: writes.append(w))
        try:
            # a client that asks for a session on the None channel whatever the server
            # offers (asyncua's own checks the endpoints; a hostile one does not)
            with monkeypatch.context() as m:
                m.setattr(Client, "find_endpoint", staticmethod(lambda eps, *_: eps[0]))
                await rogue_session(adapter.endpoint)
            assert writes == []
            async with await _trusted_plc(adapter.endpoint, server_cert, plc_cert, plc_key) as plc:
                idx = await plc.get_namespace_index(NS)
                await plc.get_node(f"ns={idx};s=Stations/s1/Trigger").write_value(True)
            assert writes == [("s1", "Trigger", True)]
        finally:
            await adapter.stop()

    asyncio.run(run())


def test_no_peer_can_register_servers_in_the_discovery_answer(tmp_path: Path) -> None:
    """RegisterServer needs no session: a peer with no certificate replaced the discovery
    URL FindServers gives for Lineside itself and added servers without end."""
    cfg, *_ = _secured(tmp_path)

    async def run() -> None:
        adapter = OpcUaAdapter(cfg)
        await adapter.start([_station()], lambda *w: None)
        client = Client(adapter.endpoint, timeout=5)
        try:
            await client.connect_socket()
            await client.send_hello()
            await client.open_secure_channel()  # policy None: discovery only
            before = [(s.ApplicationUri, s.DiscoveryUrls) for s in await client.find_servers()]
            for uri in ("urn:lineside:server", "urn:fake:0"):
                with pytest.raises(ua.uaerrors.BadServiceUnsupported):
                    await client.uaclient.register_server(ua.RegisteredServer(
                        ServerUri=uri, ServerNames=[ua.LocalizedText("evil")], IsOnline=True,
                        DiscoveryUrls=["opc.tcp://10.6.6.6:4840/evil/"]))
            after = [(s.ApplicationUri, s.DiscoveryUrls) for s in await client.find_servers()]
            assert after == before and after[0][1] == [adapter.endpoint]
            await client.close_secure_channel()
        finally:
            client.disconnect_socket()
            await adapter.stop()

    asyncio.run(run())


def test_a_plc_tag_takes_a_whole_scalar_and_a_bad_status_is_null() -> None:
    """asyncua checks a write's variant type, not its value rank nor an IndexRange, and
    stores null for a value sent with a bad status: the station got that value anyway (a
    String "0" with Bad_NotConnected started a part, a Boolean array did too)."""
    writes: list[tuple[str, str, Any]] = []

    async def run() -> None:
        adapter = OpcUaAdapter(OpcUaConfig(endpoint=LOOPBACK))
        await adapter.start([_station()], lambda *w: writes.append(w))
        try:
            async with Client(adapter.endpoint, timeout=5) as c:
                idx = await c.get_namespace_index(NS)

                def node(tag: str) -> Any:
                    return c.get_node(f"ns={idx};s=Stations/s1/{tag}")

                bad = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadNotConnected))
                for tag, value in (("Trigger", ua.Variant([True, False], ua.VariantType.Boolean)),
                                   ("Recipe", ua.Variant(["lenient"], ua.VariantType.String))):
                    with pytest.raises(ua.uaerrors.BadTypeMismatch):
                        await node(tag).write_value(ua.DataValue(value))
                # Recipe "xx" at range 0:1 replaced the whole name
                params = ua.WriteParameters()
                params.NodesToWrite = [ua.WriteValue(
                    NodeId=node("Recipe").nodeid, AttributeId=ua.AttributeIds.Value,
                    IndexRange="0:1", Value=ua.DataValue(ua.Variant("xx", ua.VariantType.String)))]
                assert (await c.uaclient.write(params))[0].value == ua.StatusCodes.BadIndexRangeInvalid
                assert await node("Recipe").read_value() == "deeppcb"
                assert await node("Trigger").read_value() is False
                assert writes == []
                # a bad status: asyncua stores null, and null is the empty value
                await node("Trigger").write_value(
                    ua.DataValue(ua.Variant("0", ua.VariantType.String), StatusCode=bad))
                await node("Recipe").write_value(
                    ua.DataValue(ua.Variant(12, ua.VariantType.Int32), StatusCode=bad))
                assert writes == [("s1", "Trigger", False), ("s1", "Recipe", "")]
        finally:
            await adapter.stop()

    asyncio.run(run())


@asynccontextmanager
async def _station_trigger() -> AsyncIterator[tuple[Client, Any]]:
    """An OPC UA adapter on loopback serving one station, a client connected to it and
    station s1's Trigger node; the adapter stopped after."""
    adapter = OpcUaAdapter(OpcUaConfig(endpoint=LOOPBACK))
    await adapter.start([_station()], lambda *w: None)
    try:
        async with Client(adapter.endpoint, timeout=5) as c:
            idx = await c.get_namespace_index(NS)
            yield c, c.get_node(f"ns={idx};s=Stations/s1/Trigger")
    finally:
        await adapter.stop()


def test_a_refused_write_is_logged_cut_short_and_not_again_and_again(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncua logs a write of the wrong type at WARNING quoting the whole value: a PLC
    (or anyone on the box's loopback) writing 100 kB strings to ``Trigger`` put 100 kB in
    the server log per write, at the rate it wrote (line review, session 43). Each such
    line is cut short, and the same refusal is told once a minute with a count."""
    async def run() -> None:
        async with _station_trigger() as (_c, trigger):
            for i in range(5):
                with pytest.raises(ua.uaerrors.BadTypeMismatch):
                    await trigger.write_value(ua.DataValue(ua.Variant(
                        str(i) * 100_000, ua.VariantType.String)))
            assert await trigger.read_value() is False

    # the bound is one for the process: forget what other tests' peers had told
    monkeypatch.setattr(peer_logs.BOUND, "_told", {})
    monkeypatch.setattr(peer_logs.BOUND, "_held", 0)
    # (its level, too: `lineside bench line` run in this process set asyncua to ERROR)
    with caplog.at_level(logging.WARNING, logger="asyncua"):
        asyncio.run(run())
    refused = [r.getMessage() for r in caplog.records
               if r.name.startswith("asyncua") and "Write refused" in r.getMessage()]
    # once cut short, then the other four counted as the adapter stopped
    assert len(refused) == 2 and all(len(m) < 400 for m in refused), [len(m) for m in refused]
    assert "characters)" in refused[0] and "more such" not in refused[0]
    assert refused[1].endswith("characters) (4 more such message(s) since last told)")
    assert peer_logs.BOUND.untold("asyncua") == 0


def test_a_subscriptions_warnings_are_bounded_and_a_stopped_burst_counted(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncua makes a logger for each subscription as a client creates it, after the
    bound was put on its loggers at start: its warnings (here a percent deadband it does
    not implement, at each change of the value; a where clause it quotes) were neither
    cut nor rate-limited, one per change per item of any client that may connect (line
    review, session 43). They are now, and the count held back is told once the minute
    is over, though the burst stopped (the bound's clock driven here, no waiting)."""
    clock = [1000.0]
    bound = peer_logs.BOUND
    monkeypatch.setattr(bound, "_told", {})
    monkeypatch.setattr(bound, "_held", 0)
    monkeypatch.setattr(bound, "clock", lambda: clock[0])

    def percent() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "Percent is not implemented" in r.getMessage()]

    class Quiet:
        def datachange_notification(self, *_args: Any) -> None:
            pass

    async def run() -> None:
        async with _station_trigger() as (c, trigger):
            sub = await c.create_subscription(50, Quiet())
            await sub.deadband_monitor(trigger, 1.0, deadbandtype=ua.UInt32(2))  # percent
            for i in range(7):  # a warning at each change
                await trigger.write_value(i % 2 == 0)
            made = {r.name for r in percent()}
            assert len(percent()) == 1, [r.name for r in percent()]
            assert made and all(n.startswith("asyncua.server.monitored_item_service.")
                                for n in made)
            assert bound.untold("asyncua") == 6
            clock[0] += peer_logs.EVERY_S  # a minute on, the burst over
            bound.flush()  # as the line's ticker does
            told = [r.getMessage() for r in percent()]
            assert len(told) == 2 and told[1].endswith(" (6 more such message(s) since "
                                                       "last told)"), told
            assert bound.untold("asyncua") == 0
            await trigger.write_value(False)  # told a moment ago (the count): held
            assert len(percent()) == 2 and bound.untold("asyncua") == 1

    with caplog.at_level(logging.WARNING, logger="asyncua"):  # (as above)
        asyncio.run(run())
    told = [r.getMessage() for r in percent()]
    assert len(told) == 3 and told[2].endswith(" (1 more such message(s) since last told)")


def test_a_client_that_reads_nothing_does_not_hold_the_stop(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncua's stop closes each connection gracefully and waits for all of them: one
    whose client reads nothing more (a PLC switched off mid-subscription leaves its data on
    TCP's retransmissions for ~15 min; a hung one for ever) held the server's shutdown."""
    # the stop's wait for clients to take their last answers runs out here: a shorter one
    monkeypatch.setattr(opcua_module, "STOP_S", 0.5)

    async def run() -> None:
        adapter = OpcUaAdapter(OpcUaConfig(endpoint=LOOPBACK))
        await adapter.start([_station()], lambda *w: None)
        client = Client(adapter.endpoint, timeout=5)
        await client.connect()
        idx = await client.get_namespace_index(NS)
        recipe = client.get_node(f"ns={idx};s=Stations/s1/Recipe")
        await adapter.write("s1", [("Recipe", "x" * 60_000)])
        protocol = client.uaclient.protocol
        assert protocol is not None and protocol.transport is not None
        protocol.transport.pause_reading()  # reads nothing more
        reads = [asyncio.ensure_future(recipe.read_value()) for _ in range(300)]  # 18 MB due
        assert adapter.server is not None
        deadline = time.monotonic() + 10
        while not any(t.get_write_buffer_size() for t in adapter.server.iserver.asyncio_transports):
            assert time.monotonic() < deadline, "the server never had to wait for the client"
            await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(adapter.stop(), 20)  # a hang guard, not a timing
        except TimeoutError:
            pytest.fail("the stop hung on a client that reads nothing")
        finally:
            for read in reads:
                read.cancel()
            await asyncio.gather(*reads, return_exceptions=True)
            client.disconnect_socket()
        assert "1 client connection(s) still unread" in caplog.text  # dropped, not waited on

    asyncio.run(run())


def _line(cfg: dict[str, Any]) -> LineSettings:
    return LineSettings(opcua=OpcUaConfig(endpoint="opc.tcp://127.0.0.1:0/lineside/", **cfg))


def test_certificate_files_are_checked_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    """An unloadable certificate was a 90-line traceback from the start-up hooks (after the
    models and cameras started); a key of another certificate, or not RSA, started a
    server every PLC timed out on; a trust 'folder' naming a file said "can't create an
    empty store"."""
    cfg, _server_cert, plc_cert, _ = _secured(tmp_path)
    base = {"certificate": cfg.certificate, "private_key": cfg.private_key,
            "trusted_certificates": cfg.trusted_certificates}
    (other := tmp_path / "other").mkdir()
    _other_cert, other_key = _certificate(other, "other", "urn:other", server=True)
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    junk = tmp_path / "junk.der"
    junk.write_text("not a certificate")
    (empty := tmp_path / "empty").mkdir()
    (tmp_path / "trusted-bad").mkdir()
    (tmp_path / "trusted-bad" / "plc.der").write_bytes(plc_cert.read_bytes())
    (tmp_path / "trusted-bad" / "order.txt").write_text("read as a certificate: 'der' in it")
    for change, message in (
            ({"private_key": str(other_key)}, r"other\.pem is not the key of line\.opcua\.certificate"),
            ({"private_key": str(ec_key)}, "Basic256Sha256 needs an RSA key"),
            ({"certificate": str(junk)}, r"line\.opcua\.certificate: .*junk\.der is no certificate"),
            ({"private_key": str(junk)}, r"line\.opcua\.private_key: .*junk\.der is no unencrypted"),
            ({"trusted_certificates": str(tmp_path / "trusted" / "plc.der")}, "is not a folder"),
            ({"trusted_certificates": str(empty)}, "holds no .der or .pem certificate"),
            ({"trusted_certificates": str(tmp_path / "trusted-bad")}, r"order\.txt is read as a DER")):
        with pytest.raises(ConfigError, match=message) as info:
            create_app(keyed(line=_line({**base, **change}), store=False))
        assert "\n" not in str(info.value)


def test_pem_files_are_read_whatever_their_name(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """asyncua reads a file as PEM only when it is named .pem: the usual server.key and
    server.crt (PEM) failed to load. A key other users can read is told."""
    cfg, server_cert, plc_cert, plc_key = _secured(tmp_path)
    key = tmp_path / "server.key"
    key.write_bytes(Path(str(cfg.private_key)).read_bytes())
    crt = tmp_path / "server.crt"
    crt.write_bytes(_pem(server_cert))
    os.chmod(key, 0o644)
    line = _line({"certificate": str(crt), "private_key": str(key),
                  "trusted_certificates": cfg.trusted_certificates})
    assert line.opcua is not None
    _secured_plc_reads_its_recipe(line.opcua, server_cert, plc_cert, plc_key)
    with caplog.at_level(logging.WARNING, "lineside.line.opcua"):
        create_app(keyed(line=line, store=False))
    assert any("server.key can be read by other users" in r.getMessage() for r in caplog.records)


async def _trusted_plc(endpoint: str, server_cert: Path, plc_cert: Path, plc_key: Path) -> Client:
    """A client with the trusted PLC's certificate, set for Basic256Sha256 (not connected)."""
    plc = Client(endpoint, timeout=5)
    plc.application_uri = "urn:plc:client"
    await plc.set_security_string(
        f"Basic256Sha256,SignAndEncrypt,{plc_cert},{plc_key},{server_cert}")
    return plc


def _secured_plc_reads_its_recipe(cfg: OpcUaConfig | None, server_cert: Path, plc_cert: Path,
                                  plc_key: Path) -> None:
    """A trusted PLC connects over Basic256Sha256 to an adapter on ``cfg`` and reads Recipe."""
    assert cfg is not None

    async def run() -> None:
        adapter = OpcUaAdapter(cfg)
        await adapter.start([_station()], lambda *w: None)
        try:
            async with await _trusted_plc(adapter.endpoint, server_cert, plc_cert, plc_key) as plc:
                idx = await plc.get_namespace_index(NS)
                assert await plc.get_node(f"ns={idx};s=Stations/s1/Recipe").read_value() == "deeppcb"
        finally:
            await adapter.stop()

    asyncio.run(run())


def _pem(der_path: Path) -> bytes:
    from cryptography import x509

    return x509.load_der_x509_certificate(der_path.read_bytes()).public_bytes(
        serialization.Encoding.PEM)


def test_pem_files_with_text_before_the_block_are_read(tmp_path: Path) -> None:
    """``openssl pkcs12 -in server.pfx -out server.pem -nodes`` (a certificate exported
    from a Windows CA or a PLC vendor's tool) writes "Bag Attributes" before each PEM
    block. asyncua read such a ``.pem`` (the PEM reader skips the text); read by content,
    it was taken for DER and the server refused to start."""
    cfg, server_cert, plc_cert, plc_key = _secured(tmp_path)
    bag = b"Bag Attributes\n    localKeyID: 01 00 00 00 \nsubject=/CN=lineside\n"
    crt = tmp_path / "server-cert.pem"
    crt.write_bytes(bag + _pem(server_cert))
    key = tmp_path / "server-key.pem"
    key.write_bytes(b"Bag Attributes\n    localKeyID: 01 00 00 00 \nKey Attributes: <No "
                    b"Attributes>\n" + Path(str(cfg.private_key)).read_bytes())
    os.chmod(key, 0o600)
    line = _line({"certificate": str(crt), "private_key": str(key),
                  "trusted_certificates": cfg.trusted_certificates})
    assert line.opcua is not None
    create_app(keyed(line=line, store=False))  # was: "... is no certificate (DER or PEM)"
    _secured_plc_reads_its_recipe(line.opcua, server_cert, plc_cert, plc_key)
