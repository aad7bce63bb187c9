"""Model distribution, the parts without a hub: ed25519 signatures of packages and the
package archive (deterministic; unpacking refuses anything but plain files)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from lineside_inspect.errors import ConfigError, PackageError, SignatureError
from lineside_inspect.fleet import archive, signing
from lineside_inspect.fleet.protocol import AssignedModel
from lineside_inspect.package import load_package

from .conftest import MODEL

DIGEST = "ab" * 32


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    signing.generate(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    return tmp_path / "k.pem", tmp_path / "k.pub.pem"


def test_sign_verify_and_what_the_signature_binds(keys: tuple[Path, Path]) -> None:
    private, public = keys
    key = signing.load_private_key(private)
    trusted = signing.load_public_key(str(public))
    sig = signing.sign(key, "deeppcb", "2", DIGEST)
    assert signing.verify([trusted], "deeppcb", "2", DIGEST, sig) == trusted
    # the same key given as its raw base64 form (as keygen prints it)
    assert signing.load_public_key(signing.raw_public(trusted)).id == trusted.id
    # the statement names model, version and digest: none can be swapped
    for model, version, digest in (("deeppcb", "3", DIGEST), ("other", "2", DIGEST),
                                   ("deeppcb", "2", "cd" * 32)):
        with pytest.raises(SignatureError, match="does not verify"):
            signing.verify([trusted], model, version, digest, sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError, match="does not verify"):
        signing.verify([trusted], "deeppcb", "2", DIGEST, flipped)
    with pytest.raises(SignatureError, match="64 bytes"):
        signing.verify([trusted], "deeppcb", "2", DIGEST, sig[:-1])
    with pytest.raises(SignatureError, match="no trusted keys"):
        signing.verify([], "deeppcb", "2", DIGEST, sig)
    stranger = signing.TrustedKey.of(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(SignatureError, match=stranger.id):
        signing.verify([stranger], "deeppcb", "2", DIGEST, sig)
    assert signing.verify([stranger, trusted], "deeppcb", "2", DIGEST, sig) == trusted


def test_keygen_files_and_bad_keys(keys: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="not overwriting"):
        signing.generate(private, tmp_path / "other.pub.pem")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        signing.load_private_key(public)
    with pytest.raises(ConfigError, match="PEM file or 32 raw bytes"):
        signing.load_public_key("bm90IGEga2V5")  # base64, but not 32 bytes
    with pytest.raises(ConfigError, match="cannot read"):
        signing.load_public_key(str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        signing.load_public_key(str(private))


def test_keygen_command(tmp_path: Path) -> None:
    from lineside_inspect.cli import app

    result = CliRunner().invoke(app, ["fleet", "keygen", str(tmp_path / "pub.pem")])
    assert result.exit_code == 0, result.output
    raw = result.output.rsplit(": ", 1)[1].strip()
    assert signing.load_public_key(raw).id == signing.load_public_key(
        str(tmp_path / "pub.pub.pem")).id
    again = CliRunner().invoke(app, ["fleet", "keygen", str(tmp_path / "pub.pem")])
    assert again.exit_code == 2 and "not overwriting" in again.output
    assert "Traceback" not in again.output


def test_archive_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    data = archive.pack(MODEL)
    copy = tmp_path / "copy"
    shutil.copytree(MODEL, copy)
    os.utime(copy / "model.json", (1, 1))  # other times and owner: the same bytes
    assert archive.pack(copy) == data
    (tmp_path / "a.tar.gz").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    archive.unpack(tmp_path / "a.tar.gz", out)
    assert load_package(out).card == load_package(MODEL).card
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]


def _tar(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(("member", "message"), [
    ((_info("/etc/x"), b"x"), "not a plain relative name"),
    ((_info("../x"), b"x"), "not a plain relative name"),
    ((_info("a/../../x"), b"x"), "not a plain relative name"),
    ((_info("model.json\n"), b"x"), "not a plain relative name"),
    ((_info("link", tarfile.SYMTYPE, "/etc/passwd"), None), "link or special"),
    ((_info("hard", tarfile.LNKTYPE, "model.json"), None), "link or special"),
    ((_info("fifo", tarfile.FIFOTYPE), None), "link or special"),
    ((_info("dev", tarfile.CHRTYPE), None), "link or special"),
])
def test_unpack_refuses_hostile_entries(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None],
                                        message: str) -> None:
    path = _tar(tmp_path, member)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PackageError, match=message):
        archive.unpack(path, dest)
    assert not (tmp_path / "x").exists() and not Path("/etc/x").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_unpack_bounds(tmp_path: Path) -> None:
    many = _tar(tmp_path, *[(_info(f"f{i}"), b"x") for i in range(archive.MAX_FILES + 1)])
    dest = tmp_path / "d1"
    dest.mkdir()
    with pytest.raises(PackageError, match="entries"):
        archive.unpack(many, dest)
    big = _tar(tmp_path, (_info("a"), b"x" * 600), (_info("b"), b"x" * 600))
    dest = tmp_path / "d2"
    dest.mkdir()
    with pytest.raises(PackageError, match="over 1000 bytes"):
        archive.unpack(big, dest, max_bytes=1000)
    assert not (dest / "b").exists()  # stopped before the entry past the bound
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(PackageError, match="could not be unpacked"):
        archive.unpack(junk, dest)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_huge_long_name_header_is_refused_before_tarfile_reads_it(tmp_path: Path,
                                                                   fmt: int) -> None:
    """tarfile reads a GNU long-name (or pax) header's whole declared size into memory
    before any name is checked: 8 MB here, gigabytes in a hostile archive."""
    path = tmp_path / "longname.tar.gz"
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        info = tarfile.TarInfo("n" * (8 << 20))
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert path.stat().st_size < 100_000  # small on the wire
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PackageError, match="long-name or pax header"):
        archive.unpack(path, dest)
    assert not any(dest.iterdir())


def test_a_chain_of_long_name_headers_is_refused_not_a_recursion_error(tmp_path: Path) -> None:
    """tarfile reads a run of GNU long-name headers by recursion: 3000 in a row (12 kB
    gzipped) overflowed the stack, a RecursionError the hub answered with a 500."""
    raw = io.BytesIO()
    name = b"x" * 10 + b"\0"
    for _ in range(3000):
        head = tarfile.TarInfo("././@LongLink")
        head.type, head.size = tarfile.GNUTYPE_LONGNAME, len(name)
        raw.write(head.tobuf(format=tarfile.GNU_FORMAT) + name.ljust(512, b"\0"))
    raw.write(tarfile.TarInfo("model.json").tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    path = tmp_path / "chain.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PackageError, match="over 8 long-name or pax headers in a row"):
        archive.unpack(path, dest)
    # a pax header and a long name on one member, as real archives have, still unpack
    both = tmp_path / "both.tar.gz"
    with tarfile.open(both, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("n" * 300 + "é")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    ok = tmp_path / "ok"
    ok.mkdir()
    with pytest.raises(PackageError, match="not a plain relative name"):  # judged by name
        archive.unpack(both, ok)


def test_a_pax_size_cannot_hide_a_long_name_nor_a_sparse_map(tmp_path: Path) -> None:
    """A pax ``size=0`` over a member whose own header says otherwise once misaligned a
    raw header walk, hiding a 200 MB long name behind it; a GNU sparse 1.0 member makes
    tarfile parse its map from the data. Both are refused inside tarfile's own reader."""
    path = tmp_path / "sparse.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("model.onnx")
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                            "GNU.sparse.name": "model.onnx", "GNU.sparse.realsize": "1"}
        info.size = 1024
        tar.addfile(info, io.BytesIO(b"9" * 1000 + b"\n" + b"0" * 23))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(PackageError, match="sparse member"):
        archive.unpack(path, dest)

    raw = io.BytesIO()
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    record = b"11 size=0\n"
    pax.size = len(record)
    raw.write(pax.tobuf(format=tarfile.USTAR_FORMAT) + record + bytes(512 - len(record)))
    decoy = tarfile.TarInfo("decoy")
    decoy.size = 1024  # tarfile takes the pax size (0); a raw walk took these 1024 bytes
    raw.write(decoy.tobuf(format=tarfile.USTAR_FORMAT))
    long = tarfile.TarInfo("././@LongLink")
    long.type = tarfile.GNUTYPE_LONGNAME
    long.size = 200 << 20
    raw.write(long.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    hidden = tmp_path / "hidden.tar.gz"
    hidden.write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(PackageError, match="long-name or pax header"):
        archive.unpack(hidden, dest)


def test_pack_refuses_links(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "model.json").write_text("{}")
    (pkg / "evil").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="link or special"):
        archive.pack(pkg)


@pytest.mark.parametrize("bad", [{"name": "../x"}, {"version": "1\n"}, {"version": "a/b"},
                                 {"sha256": DIGEST + "00"}, {"sha256": "x" + DIGEST[1:]}])
def test_assignment_names_are_full_matched(bad: dict[str, str]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AssignedModel(**({"name": "deeppcb", "version": "2", "sha256": DIGEST} | bad))


def test_a_box_status_keeps_500_characters_of_each_model_error() -> None:
    """A box key stored ~1 MB of text a report on the fleet page (fleet review, session
    32); the box cuts them to 500 itself, so an older box's report is still taken."""
    from lineside_inspect.fleet.protocol import BoxStatus

    status = BoxStatus(version="x", models=[], ready=True, forward_backlog=0,
                       model_errors=["e" * 100_000, "short"])
    assert [len(e) for e in status.model_errors] == [500, 5]
