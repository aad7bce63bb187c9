"""A set from elsewhere holding symbolic links that lead out of it (session 53): a YOLO
label linked to a secret showed its lines in the problems, an image linked to a private
picture was copied into DST. Links to files out of the set are refused, named with their
targets and never read, unless ``--follow-links``; a folder linked out (``images/`` on a
share, issue #18) is followed and said; links within the set keep working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.dataset import import_dataset
from lineside_inspect.errors import DatasetError

from .test_dataset_import_findings import _jpg, _yolo

SECRET = "AKIA_TOPSECRET one two\npassword=hunter2\n"


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "credentials"
    path.parent.mkdir(parents=True)
    path.write_text(SECRET)
    return path


def test_a_label_linked_to_a_secret_is_refused_unread(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    src = tmp_path / "src"
    _yolo(src, "names: [dent]\n", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    (src / "labels" / "b.txt").unlink()
    (src / "labels" / "b.txt").symlink_to(secret)
    r = CliRunner().invoke(app, ["data", "import", "-f", "yolo", str(src), str(tmp_path / "out")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"1 symbolic link(s) to files out of the set: labels/b.txt -> {secret}" in r.stderr
    assert "--follow-links" in r.stderr
    # what to do, runnable as shown: the set's own folder, not a placeholder (session 53 review)
    said = " ".join(r.stderr.split())
    assert f"delete those links (find {src} -type l lists them); links to your own files (on a " \
        "share, say): pass --follow-links to read them" in said
    assert "AKIA" not in r.output and "hunter2" not in r.output  # named, never shown
    assert not (tmp_path / "out").exists()


def test_an_image_linked_out_is_not_copied_and_a_folder_linked_out_is_said(tmp_path: Path) -> None:
    private = tmp_path / "elsewhere" / "private.jpg"
    _jpg(private)
    share = tmp_path / "share"
    _jpg(share / "c.jpg")
    src = tmp_path / "src"
    _jpg(src / "a.jpg")
    (src / "b.jpg").symlink_to(private)
    (src / "more").symlink_to(share, target_is_directory=True)
    with pytest.raises(DatasetError) as info:
        import_dataset("good", src, tmp_path / "out")
    msg = str(info.value)
    assert f"1 symbolic link(s) to files out of the set: b.jpg -> {private};" in msg
    assert "more/" not in msg  # a folder linked out is not what is refused
    assert not (tmp_path / "out").exists()
    (src / "b.jpg").unlink()
    ds, _ = import_dataset("good", src, tmp_path / "out")
    assert sorted(r.file_name for r in ds.images) == ["a.jpg", "more/c.jpg"]
    assert f"1 link(s) out of the set followed (more/ -> {share})" in str(ds.info["layout"])


def test_a_coco_json_linked_out_is_refused_as_a_file_given_too(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    src = tmp_path / "coco"
    _jpg(src / "images" / "a.jpg")
    (src / "annotations").mkdir()
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 96}],
           "annotations": [], "categories": [{"id": 1, "name": "dent"}]}
    (src / "annotations" / "instances.json").write_text(json.dumps(doc))
    (src / "images" / "b.jpg").symlink_to(secret)
    for given in (src, src / "annotations" / "instances.json"):  # the set: above annotations/
        with pytest.raises(DatasetError, match=r"images/b\.jpg -> .*credentials; nothing was read"):
            import_dataset("coco", given, tmp_path / "out")


def test_links_within_the_set_loops_and_dangling_links_work_as_before(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _yolo(src, "names: [dent]\n", {"a": "0 0.5 0.5 0.2 0.2\n"})
    (src / "images" / "shared.jpg").symlink_to(src / "images" / "a.jpg")  # a template, twice
    (src / "labels" / "shared.txt").symlink_to("a.txt")
    (src / "images" / "again").symlink_to(src, target_is_directory=True)  # a loop, walked once
    (src / "labels" / "gone.txt").symlink_to(tmp_path / "nowhere.txt")  # reads nothing
    ds, _ = import_dataset("yolo", src, tmp_path / "out")
    assert sorted(r.file_name for r in ds.images) == ["a.jpg", "shared.jpg"]
    assert all(len(r.boxes) == 1 for r in ds.images)
    assert "out of the set" not in str(ds.info["layout"])


def test_follow_links_reads_through_them_and_says_so(tmp_path: Path) -> None:
    share = tmp_path / "share"
    _jpg(share / "a.jpg")
    _jpg(share / "b.jpg")
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):  # the user's own files, each linked from a share
        (src / "images" / name).symlink_to(share / name)
    r = CliRunner().invoke(app, ["data", "import", "-f", "good", "--follow-links", str(src),
                                 str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert f"2 link(s) out of the set followed (images/a.jpg -> {share / 'a.jpg'}, images/b.jpg" in r.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "images").rglob("*.jpg")) == ["a.jpg", "b.jpg"]


def test_a_file_link_inside_a_folder_linked_out_is_refused_too(tmp_path: Path) -> None:
    # one archive unpacked: the set, and beside it a folder its images/ links to, whose
    # only picture links to a private one; the walk did not look into a folder linked
    # out, and the importer copied the private picture into DST (review, session 53)
    private = tmp_path / "home" / "private.jpg"
    _jpg(private)
    (tmp_path / "other" / "deeper").mkdir(parents=True)
    (tmp_path / "other" / "deeper" / "a.jpg").symlink_to(private)
    _jpg(tmp_path / "other" / "b.jpg")
    (tmp_path / "other" / "up").symlink_to("deeper", target_is_directory=True)
    src = tmp_path / "src"
    src.mkdir()
    (src / "images").symlink_to("../other", target_is_directory=True)
    with pytest.raises(DatasetError) as info:
        import_dataset("good", src, tmp_path / "out")
    msg = str(info.value)
    # named by the path it has in the set, once (not again through up/)
    assert f"1 symbolic link(s) to files out of the set: images/deeper/a.jpg -> {private};" in msg
    assert not (tmp_path / "out").exists()
    # a picture of the share linked from within it reads nothing the share does not hold
    (tmp_path / "other" / "deeper" / "a.jpg").unlink()
    (tmp_path / "other" / "deeper" / "a.jpg").symlink_to("../b.jpg")
    ds, _ = import_dataset("good", src, tmp_path / "out")
    assert sorted(r.file_name for r in ds.images) == ["images/b.jpg", "images/deeper/a.jpg"]
    assert f"1 link(s) out of the set followed (images/ -> {tmp_path / 'other'})" in str(ds.info["layout"])


def test_a_label_linked_into_a_folder_linked_out_is_refused_all_the_same(tmp_path: Path) -> None:
    """A folder linked out is followed; a set's own file linked into it is not a share's
    link to its own file: ``labels/b.txt -> ~/.aws/credentials`` beside ``x/ -> ~/.aws``
    was read (its lines in the problems) once the folder link made it look followed."""
    secret = _secret(tmp_path)
    src = tmp_path / "src"
    _yolo(src, "names: [dent]\n", {"a": "0 0.5 0.5 0.2 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"})
    (src / "x").symlink_to(secret.parent, target_is_directory=True)
    (src / "labels" / "b.txt").unlink()
    (src / "labels" / "b.txt").symlink_to(secret)
    with pytest.raises(DatasetError) as info:
        import_dataset("yolo", src, tmp_path / "out")
    assert f"1 symbolic link(s) to files out of the set: labels/b.txt -> {secret};" in str(info.value)
    assert "AKIA" not in str(info.value)
    assert not (tmp_path / "out").exists()
