"""Writing a dataset folder never destroys what it reads or what it does not own, and
nothing is put in place that does not read back (new-user findings 1, 4 and 7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import (
    Box,
    Dataset,
    ImageRecord,
    canonical,
    export_dataset,
    import_dataset,
    read_dataset,
    write_dataset,
)
from lineside_inspect.errors import DatasetError


def _jpg(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))
    return path


def _xml(path: Path, image: str, names: list[str]) -> None:
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>20</xmax>"
        "<ymax>20</ymax></bndbox></object>" for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{image}</filename><size><width>64</width>"
                    f"<height>48</height></size>{objects}</annotation>")


def _voc(src: Path, n: int = 2) -> Path:
    for i in range(n):
        _jpg(src / "JPEGImages" / f"p{i}.jpg")
        _xml(src / "Annotations" / f"p{i}.xml", f"p{i}.jpg", ["scratch"])
    return src


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- finding 1: --overwrite must not delete the source or other data ---------------------

def test_overwrite_refuses_a_dst_that_holds_the_source(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _voc(data / "raw" / "voc")
    (data / "NOTES.txt").write_text("notes")
    _jpg(data / "other_set" / "x.jpg")
    before = _tree(tmp_path)
    with pytest.raises(DatasetError, match="holds the source"):
        import_dataset("voc", data / "raw" / "voc", data, overwrite=True)
    assert _tree(tmp_path) == before


def test_overwrite_refuses_dst_same_as_source_also_through_a_symlink(tmp_path: Path) -> None:
    src = _voc(tmp_path / "ow2")
    (tmp_path / "link").symlink_to(src)
    before = _tree(tmp_path)
    for dst in (src, tmp_path / "link"):
        with pytest.raises(DatasetError, match="is or holds the source"):
            import_dataset("voc", src, dst, overwrite=True)
    assert _tree(tmp_path) == before


def test_dst_inside_the_source_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "flat"  # images beside their XMLs
    _jpg(src / "a.jpg")
    _xml(src / "a.xml", "a.jpg", ["dent"])
    with pytest.raises(DatasetError, match="lies inside the source"):
        import_dataset("voc", src, src / "out")
    assert not (src / "out").exists()
    # the folder imported from, when the caller names it, is protected as a whole
    voc = _voc(tmp_path / "voc")
    import_dataset("voc", voc, tmp_path / "ok")
    draft = read_dataset(tmp_path / "ok")
    with pytest.raises(DatasetError, match="lies inside the source"):
        write_dataset(draft, voc / "out", source=voc)
    assert not (voc / "out").exists()
    # and import names it: a VOC folder's images sit in JPEGImages/, yet its root is read
    with pytest.raises(DatasetError, match="lies inside the source"):
        import_dataset("voc", voc, voc / "out")
    assert not (voc / "out").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    src = _voc(tmp_path / "voc")
    other = tmp_path / "photos"
    _jpg(other / "holiday.jpg")
    with pytest.raises(DatasetError) as exc:
        import_dataset("voc", src, other, overwrite=True)
    assert str(other) in str(exc.value) and "not a Lineside dataset" in str(exc.value)
    assert _tree(other) == {"holiday.jpg"}
    # an empty folder and an earlier dataset may be replaced
    (tmp_path / "empty").mkdir()
    assert len(import_dataset("voc", src, tmp_path / "empty", overwrite=True)[0].images) == 2
    ds, _ = import_dataset("voc", _voc(tmp_path / "voc3", 3), tmp_path / "empty", overwrite=True)
    assert len(read_dataset(tmp_path / "empty").images) == 3 == len(ds.images)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_overwrite_into_the_source_parent_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _voc(data / "raw" / "voc")
    result = CliRunner().invoke(
        app, ["data", "import", "-f", "voc", str(data / "raw" / "voc"), str(data), "--overwrite"])
    assert result.exit_code != 0
    assert "holds the source" in result.output and "Traceback" not in result.output
    assert len(list((data / "raw" / "voc" / "Annotations").iterdir())) == 2


def test_export_into_the_dataset_being_read_is_refused(tmp_path: Path) -> None:
    ds_dir = tmp_path / "ds"
    import_dataset("voc", _voc(tmp_path / "voc"), ds_dir)
    before = _tree(ds_dir)
    for fmt in ("yolo", "coco"):
        with pytest.raises(DatasetError, match="source"):
            export_dataset(fmt, ds_dir, ds_dir / "export")
    with pytest.raises(DatasetError, match="holds the source"):
        export_dataset("yolo", ds_dir, tmp_path)
    assert _tree(ds_dir) == before


# --- finding 4: an empty class name; nothing in place unless it reads back ---------------

@pytest.mark.parametrize("label", ["", "   "])
def test_empty_class_name_is_refused_before_writing(tmp_path: Path, label: str) -> None:
    image = _jpg(tmp_path / "src" / "a.jpg")
    rec = ImageRecord("a.jpg", 64, 48, [Box(1, 1, 9, 9, label, origin="src/a.xml:object[0]")],
                      source=image)
    with pytest.raises(DatasetError, match="class names") as exc:
        write_dataset(Dataset([label], [rec]), tmp_path / "out")
    assert any("src/a.xml" in str(p) and "empty class name" in str(p) for p in exc.value.problems)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_voc_empty_name_never_leaves_a_broken_folder(tmp_path: Path) -> None:
    src = _voc(tmp_path / "voc")
    _jpg(src / "JPEGImages" / "e.jpg")
    _xml(src / "Annotations" / "e.xml", "e.jpg", [""])
    try:
        ds, _ = import_dataset("voc", src, tmp_path / "out", skip_invalid=True)
    except DatasetError:
        assert not (tmp_path / "out").exists()
    else:  # the importer reports the empty name as e.xml's problem and leaves it out
        assert "" not in ds.categories and read_dataset(tmp_path / "out").images
    assert sorted(p.name for p in tmp_path.iterdir()) in (["out", "voc"], ["voc"])


def test_a_dataset_that_does_not_read_back_replaces_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _voc(tmp_path / "voc")
    import_dataset("voc", src, tmp_path / "out")
    before = (tmp_path / "out" / "annotations.json").read_text()
    good = canonical.to_coco

    def broken(dataset: Dataset) -> dict[str, object]:
        doc = good(dataset)
        doc["categories"][0]["name"] = ""  # type: ignore[index]
        return doc

    monkeypatch.setattr(canonical, "to_coco", broken)
    with pytest.raises(DatasetError, match="does not read back") as exc:
        import_dataset("voc", src, tmp_path / "out", overwrite=True)
    assert all(".out." not in str(p) for p in exc.value.problems)  # no temp path shown
    assert (tmp_path / "out" / "annotations.json").read_text() == before
    with pytest.raises(DatasetError, match="does not read back"):
        import_dataset("voc", src, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "voc"]


# --- finding 7 (JSON): non-UTF-8 is a clear error; a BOM is accepted ---------------------

def _coco(folder: Path) -> dict[str, object]:
    _jpg(folder / "images" / "a.jpg")
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}],
            "categories": [{"id": 1, "name": "fissure"}]}


def test_latin1_json_names_the_file(tmp_path: Path) -> None:
    doc = _coco(tmp_path / "src")
    doc["categories"] = [{"id": 1, "name": "fissuré"}]
    path = tmp_path / "src" / "annotations.json"
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8") as exc:
        import_dataset("coco", tmp_path / "src", tmp_path / "out")
    assert str(path) in str(exc.value) and "UTF-8" in str(exc.value.problems[0])


def test_json_with_a_utf8_bom_is_read(tmp_path: Path) -> None:
    doc = _coco(tmp_path / "src")
    (tmp_path / "src" / "annotations.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps(doc).encode())
    ds, skipped = import_dataset("coco", tmp_path / "src", tmp_path / "out")
    assert not skipped and ds.categories == ["fissure"] and len(ds.images[0].boxes) == 1


# --- second names and an interrupted overwrite (left open by the first pass) -------------

def _as_subprocess(code: str, *, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)


def test_a_bind_mount_of_the_source_is_still_the_source(tmp_path: Path) -> None:
    """Paths resolve differently through a bind mount, device and inode do not: writing
    to the folder the source is read through must be refused, not replace the source."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("needs a private mount namespace (unshare -m, as root)")
    data = tmp_path / "data"
    _voc(data / "raw" / "voc")
    (tmp_path / "alias").mkdir()
    before = _tree(data)
    code = ("import sys\nfrom lineside_inspect.dataset import import_dataset\n"
            "from lineside_inspect.errors import DatasetError\n"
            "try:\n"
            f"    import_dataset('voc', {str(tmp_path / 'alias' / 'raw' / 'voc')!r}, "
            f"{str(data)!r}, overwrite=True)\n"
            "except DatasetError as exc:\n    print(exc.message); sys.exit(3)\n")
    script = tmp_path / "run.py"
    script.write_text(code)
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount --bind "{data}" "{tmp_path / "alias"}" && exec "{sys.executable}" "{script}"'],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "is or holds the source" in out.stdout
    assert _tree(data) == before


def test_an_overwrite_killed_between_its_renames_is_put_back(tmp_path: Path) -> None:
    """kill -9 after the old dataset went to its hidden holder and before the new one took
    its place: the next write puts the old one back where it was."""
    src, dst = _voc(tmp_path / "voc", 3), tmp_path / "out"
    import_dataset("voc", _voc(tmp_path / "voc1", 1), dst)
    code = (
        "import os, signal, pathlib\n"
        "real = pathlib.Path.rename\n"
        "def rename(self, target):\n"
        "    out = real(self, target)\n"
        "    if pathlib.Path(target).name == 'old':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return out\n"
        "pathlib.Path.rename = rename\n"
        "from lineside_inspect.dataset import import_dataset\n"
        f"import_dataset('voc', {str(src)!r}, {str(dst)!r}, overwrite=True)\n")
    out = _as_subprocess(code)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert not dst.exists()
    assert [p.name for p in tmp_path.glob(".out.old.*/old")] == ["old"]
    with pytest.raises(DatasetError, match=r"interrupted; the dataset it had set aside in "
                                          r"\.out\.old\.w\d+\.\w{8} is back in place"):
        import_dataset("voc", src, dst)
    assert len(read_dataset(dst).images) == 1  # the old dataset, back in place
    assert not list(tmp_path.glob(".out.old.*"))
    import_dataset("voc", src, dst, overwrite=True)
    assert len(read_dataset(dst).images) == 3


def test_only_this_dsts_own_holder_is_put_back(tmp_path: Path) -> None:
    """What restore_interrupted must not move: another DST's holder whose name starts the
    same, a holder whose ``old`` is a link, and a folder being read that is named like a
    holder."""
    import_dataset("voc", _voc(tmp_path / "v1"), tmp_path / "pcb.old.v1")
    other = tmp_path / ".pcb.old.v1.old.abcd1234"  # pcb.old.v1's holder, not pcb's
    other.mkdir()
    (tmp_path / "pcb.old.v1").rename(other / "old")
    import_dataset("voc", _voc(tmp_path / "v2", 3), tmp_path / "precious")
    linked = tmp_path / ".out.old.abcd1234"
    linked.mkdir()
    (linked / "old").symlink_to(tmp_path / "precious")
    before = _tree(tmp_path)
    import_dataset("voc", _voc(tmp_path / "v3", 2), tmp_path / "pcb")
    import_dataset("voc", tmp_path / "v3", tmp_path / "out")
    assert len(read_dataset(tmp_path / "pcb").images) == 2
    assert not (tmp_path / "out").is_symlink() and len(read_dataset(tmp_path / "out").images) == 2
    assert len(read_dataset(tmp_path / "precious").images) == 3
    assert before <= _tree(tmp_path)  # both holders left as they were
    # a source named like a holder of DST is read, never moved into DST's place
    src = _voc(tmp_path / ".ds.old.abcd1234" / "old")
    import_dataset("voc", src, tmp_path / "ok")
    (src / "annotations.json").write_text((tmp_path / "ok" / "annotations.json").read_text())
    import_dataset("voc", src, tmp_path / "ds")
    assert (src / "annotations.json").is_file() and len(list((src / "Annotations").iterdir())) == 2
    assert len(read_dataset(tmp_path / "ds").images) == 2


def _killed_at(call: str, marker: str, src: Path, dst: Path) -> None:
    """Run an overwrite import of ``src`` to ``dst`` in a child killed with SIGKILL when
    ``call`` (``shutil.copyfile`` or ``shutil.rmtree``) is first reached with a path
    holding ``marker``."""
    module, name = call.split(".")
    code = (
        f"import os, signal, {module}\n"
        f"real = {module}.{name}\n"
        "def hook(path, *a, **k):\n"
        f"    if {marker!r} in str(path):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, *a, **k)\n"
        f"{module}.{name} = hook\n"
        "from lineside_inspect.dataset import import_dataset\n"
        f"import_dataset('voc', {str(src)!r}, {str(dst)!r}, overwrite=True)\n")
    out = _as_subprocess(code)
    assert out.returncode == -signal.SIGKILL, (marker, out.stderr)


def _dead_pid() -> int:
    """The pid of a child that has ended and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_what_killed_writes_leave_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """kill -9 while copying leaves a hidden staging folder with a copy of the images; kill
    -9 after the swap and before the old dataset is deleted leaves its holder. A later
    successful write to the same DST removes them; a live writer's folder, folders of
    other names or other contents, and a refused write leave everything."""
    src, dst = _voc(tmp_path / "voc", 3), tmp_path / "out"
    import_dataset("voc", _voc(tmp_path / "voc1", 1), dst)
    _killed_at("shutil.copyfile", "", src, dst)  # while copying
    staging = list(tmp_path.glob(".out.w*"))
    assert len(staging) == 1 and (staging[0] / "images").is_dir()
    assert len(read_dataset(dst).images) == 1  # DST untouched
    # a refused write (no --overwrite) deletes nothing
    with pytest.raises(DatasetError, match="already exists"):
        import_dataset("voc", src, dst)
    assert staging[0].is_dir()
    _killed_at("shutil.rmtree", ".out.old.", src, dst)  # after the swap
    holders = list(tmp_path.glob(".out.old.w*"))
    assert len(holders) == 1 and (holders[0] / "old" / "annotations.json").is_file()
    assert len(read_dataset(dst).images) == 3  # the swap had happened
    dead = _dead_pid()
    kept = [tmp_path / f".out.w{os.getpid()}.abcd1234",  # this process: a writer still running
            tmp_path / f".outer.w{dead}.abcd1234", tmp_path / f".out.w{dead}.abcd1234.x",
            tmp_path / f".out.old.w{dead}.abcd1234",  # a holder with more than ``old``
            tmp_path / ".out.old.20240115"]  # a user's backup, named like an old holder
    for folder in kept:
        (folder / "old").mkdir(parents=True)
    (kept[3] / "notes.txt").write_text("mine")
    import_dataset("voc", _voc(tmp_path / "voc2", 2), dst, overwrite=True)
    assert len(read_dataset(dst).images) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        p.name for p in kept)


def test_a_dataset_named_like_a_holder_never_deletes_the_held_dataset(tmp_path: Path) -> None:
    """``parts``' holder ``.parts.old.w<pid>.X`` is named exactly like the staging folder
    of a dataset ``parts.old``: writing ``parts.old`` must leave it, and the next write of
    ``parts`` puts it back."""
    import_dataset("voc", _voc(tmp_path / "v1", 1), tmp_path / "parts.old")
    import_dataset("voc", _voc(tmp_path / "v3", 3), tmp_path / "parts")
    holder = tmp_path / f".parts.old.w{_dead_pid()}.abcd1234"
    holder.mkdir()
    (tmp_path / "parts").rename(holder / "old")  # an overwrite killed between its renames
    import_dataset("voc", _voc(tmp_path / "v2", 2), tmp_path / "parts.old", overwrite=True)
    assert (holder / "old" / "annotations.json").is_file()
    with pytest.raises(DatasetError, match="is back in place"):
        import_dataset("voc", tmp_path / "v2", tmp_path / "parts")
    assert len(read_dataset(tmp_path / "parts").images) == 3


def test_a_dataset_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """It said "not a Lineside dataset ... lineside data import -f ... <the path> DST",
    offering the missing folder as the labels to import."""
    from lineside_inspect.dataset import read_dataset

    with pytest.raises(DatasetError, match=r"deeppcb-test: no such folder \(a dataset is a folder "
                       r"made by lineside data import"):
        read_dataset(tmp_path / "deeppcb-test")
    (tmp_path / "photos").mkdir()
    with pytest.raises(DatasetError, match=r"photos: not a Lineside dataset"):
        read_dataset(tmp_path / "photos")
