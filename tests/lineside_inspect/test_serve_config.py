"""``make serve``'s own config (configs/serve.yaml): the bundled models, their recipes,
the simulated cameras (one per model) and the reference station all come up and judge."""

from __future__ import annotations

from pathlib import Path

from lineside_inspect.config import load_settings

from .conftest import start_server

ROOT = Path(__file__).resolve().parents[2]


def test_make_serve_config(tmp_path: Path) -> None:
    settings = load_settings(ROOT / "configs" / "serve.yaml", data_dir=str(tmp_path),
                             device="cpu")
    running, stop = start_server(settings)
    try:
        with running.client() as c:  # no keys: loopback, everything allowed
            models = {m["name"]: m["versions"][0] for m in c.get("/v1/models").json()}
            assert models["deeppcb"]["needs_reference"] is False
            assert models["deeppcb-ref"]["needs_reference"] is True
            assert models["deeppcb-good"]["kind"] == "anomaly"
            cams = {h["id"]: h for h in c.get("/v1/cameras").json()}
            assert set(cams) == {"sim1", "station1", "station1-good"}
            seen = {}
            for cam in ("sim1", "station1", "station1-good"):
                r = c.post(f"/v1/cameras/{cam}/trigger", params={"timeout_s": 10})
                assert r.status_code == 200, r.text
                seen[cam] = r.json()
            assert seen["sim1"]["model"]["name"] == "deeppcb" and seen["sim1"]["reference"] is None
            ref = seen["station1"]
            assert ref["model"]["name"] == "deeppcb-ref" and ref["recipe"]["name"] == "deeppcb-ref"
            assert ref["reference"]["name"] == "station1-reference"
            good = seen["station1-good"]  # the same station, the good-only model, no reference
            assert good["model"]["name"] == "deeppcb-good" and good["reference"] is None
            # the station's frames through HTTP, with the reference sent along: the good
            # part passes, the defective one fails
            station = ROOT / "configs" / "line"
            verdicts = []
            for part in ("part-0001.jpg", "part-0002.jpg"):
                r = c.post("/v1/inspect", params={"recipe": "deeppcb-ref"}, files={
                    "image": (part, (station / "station1" / part).read_bytes(), "image/jpeg"),
                    "reference": ("ref.jpg", (station / "station1-reference.jpg").read_bytes(),
                                  "image/jpeg")})
                assert r.status_code == 200, r.text
                verdicts.append(r.json()["verdict"])
            assert verdicts == ["pass", "fail"]
            # the single-image model needs nothing more than the frame
            r = c.post("/v1/inspect", content=(station / "station1" / "part-0002.jpg").read_bytes(),
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["model"]["name"] == "deeppcb"
            # the good-only model tells the good part from the defective one without a
            # reference or a defect label; fused with the detector, either may fail a part
            judged = []
            for part in ("part-0001.jpg", "part-0002.jpg"):
                r = c.post("/v1/inspect", params={"recipe": "deeppcb-good"},
                           content=(station / "station1" / part).read_bytes(),
                           headers={"content-type": "image/jpeg"})
                assert r.status_code == 200, r.text
                judged.append(r.json())
            assert [j["verdict"] for j in judged] == ["pass", "fail"]
            assert judged[1]["reasons"][0]["rule"] == "anomaly"
            assert {d["label"] for d in judged[1]["defects"]} == {"anomaly"}
            r = c.post("/v1/inspect", params={"recipe": "deeppcb-fused"},
                       content=(station / "station1" / "part-0002.jpg").read_bytes(),
                       headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["verdict"] == "fail"
    finally:
        stop()


def test_a_wrong_model_or_recipe_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    """Checked before the server starts: the application's start-up would log a traceback."""
    from typer.testing import CliRunner

    from lineside_inspect.cli import app

    env = {"LINESIDE_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "missing"),
                                      "--port", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert "missing: model package folder not found" in result.output
    assert "Traceback" not in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    result = CliRunner().invoke(app, ["serve", "--recipe", str(bad), "--port", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert "bad.yaml" in result.output and "Traceback" not in result.output
    bad.write_bytes(b"\xff\xfename: r\n")  # not UTF-8
    result = CliRunner().invoke(app, ["serve", "--recipe", str(bad), "--port", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert "is not" in result.output and "Traceback" not in result.output
