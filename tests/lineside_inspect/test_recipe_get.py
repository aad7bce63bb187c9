"""``GET /v1/recipes/{name}``: a user who had just put a recipe (the README's ``PUT
/v1/recipes/{name}``) asked for it back at the same URL and got 405 Method Not Allowed;
only the list (admins) and a recipe's regions (reviewers) were there. Now the recipe
judging under the name, as the PUT answers it, which puts back unchanged. A real server."""

from __future__ import annotations

from pathlib import Path

from .conftest import ROOT, keyed, start_server

RECIPES = ROOT / "configs" / "recipes"


def test_a_recipe_is_read_back_where_it_was_put(tmp_path: Path) -> None:
    srv, stop = start_server(keyed(data_dir=str(tmp_path),
                                   recipes=[str(RECIPES / "deeppcb.yaml")]))
    try:
        # the role first, as the list: a key's absence or role answered before the name
        with srv.client(None) as c:
            assert c.get("/v1/recipes/deeppcb").status_code == 401
        for role in ("line", "reviewer"):
            with srv.client(role) as c:
                r = c.get("/v1/recipes/deeppcb")
                assert r.status_code == 403, (role, r.text)
        with srv.client("admin") as c:
            # the configured recipe, as its file says
            r = c.get("/v1/recipes/deeppcb")
            assert r.status_code == 200, r.text
            assert r.json()["version"] == "1" and r.json()["min_size_px"] == 8
            assert r.json()["critical"] == ["open", "short"]
            # an unknown name: 404 naming it; a name no recipe may have (full-matched, as
            # the PUT's body's name is): 422 naming the path's name, never a lookup
            r = c.get("/v1/recipes/spare")
            assert r.status_code == 404 and "spare" in r.json()["error"]["message"], r.text
            for bad in ("..x", "a b", "x" * 129, "-deeppcb"):
                r = c.get(f"/v1/recipes/{bad}")
                assert r.status_code == 422, (bad, r.text)
                assert "path.name" in r.json()["error"]["message"], (bad, r.text)
            # PUT, then GET: what the PUT answered, field for field
            put = {"name": "spare", "version": "2", "model": "deeppcb", "min_size_px": 20,
                   "critical": ["open"], "roi": [[[0, 0], [640, 0], [640, 640], [0, 640]]]}
            r = c.put("/v1/recipes/spare", json=put)
            assert r.status_code == 200, r.text
            answered = r.json()
            r = c.get("/v1/recipes/spare")
            assert r.status_code == 200, r.text
            assert r.json() == answered and r.json()["min_size_px"] == 20
            # and the answer puts back as it is: nothing changes (no second audit record)
            audited = c.get("/v1/audit", params={"action": "recipe_put"}).json()["items"]
            r = c.put("/v1/recipes/spare", json=c.get("/v1/recipes/spare").json())
            assert r.status_code == 200 and r.json() == answered, r.text
            again = c.get("/v1/audit", params={"action": "recipe_put"}).json()["items"]
            assert len(again) == len(audited) == 1
            # a version changed and put: read back changed; dropped: 404 again
            r = c.put("/v1/recipes/spare", json={**answered, "version": "3", "min_size_px": 30})
            assert r.status_code == 200, r.text
            assert c.get("/v1/recipes/spare").json()["min_size_px"] == 30
            assert c.delete("/v1/recipes/spare").status_code == 200
            assert c.get("/v1/recipes/spare").status_code == 404
    finally:
        stop()
