"""The words of the admission rules' refusals (409 ``gate_failed``,
:mod:`~lineside_inspect.lifecycle.admission`): why a version may not judge, after its
name and version, and the gate call that answers it. Text alone, built from what the
rules found; the rules themselves, which decide, stay in ``admission``."""

from __future__ import annotations

from lineside_inspect.package import default_recipe_name
from lineside_inspect.store.models import GateReportRow

NOW = "under what judges it now"  # how a stale pass's model is gated again (stale_note)
# ... when the recipe is being put (a pin) as no recipe of its name stands
PUT_FIRST = "under the recipe as it is being put"


def gate_call(model: str, version: str, golden: str, recipe: str | None) -> str:
    named = "" if recipe is None else f", \"recipe\": \"{recipe}\""
    return (f"POST /v1/models/{model}/gate {{\"version\": \"{version}\", \"golden\": "
            f"\"{golden}\"{named}}}")


def missing_note(model: str, version: str, judging: list[str], lacking: dict[str, str],
                 golden: str, *, role: str, own: bool, held: str = "",
                 on: str | None = None) -> str:
    """The refusal of a version without a current pass under each recipe that would
    judge it (after its name and version): which lack one and why, and the calls that
    gate it under each of those (and under all at once; ``held``: the golden sets the
    server holds, ``AdmissionRules._golden_for``; ``on``: the set's version the calls
    gate on, ``name:version``, where the server holds it)."""
    calls = "; ".join(gate_call(model, version, golden, None if own else n) for n in lacking)
    # which recipes, and on which version: "Gate it under each" said it of one recipe too,
    # and named no version where the one-recipe refusal says "on g:3" (session 47, QA walk)
    under = (f"under recipe {next(iter(lacking))}" if len(lacking) == 1 else
             f"under each of the {len(lacking)} without one ({', '.join(lacking)})")
    note = (f"has no current passing gate report under every recipe that would judge it "
            f"once admitted, recipe(s) {', '.join(judging)} (lifecycle.gate.require_gate; "
            "a pass under one recipe says nothing of how another, with other regions, "
            f"floors or partner, judges it): {len(lacking)} of {len(judging)} without one: "
            + "; ".join(f"recipe {n}: {why}" for n, why in lacking.items())
            + f". Gate it {under}{'' if on is None else f', on {on}'}: {calls}{held}")
    if role == "pinned":
        return note + (" (a recipe being put that pins it: put it first as it will "
                       "stand but following the active version, no model_version, gate "
                       "under it, then pin; a report of lineside gate is not kept)")
    if len(lacking) > 1:
        note += f"; or under all at once: {gate_call(model, version, golden, '*')}"
    return note + " (a report of lineside gate is not kept: it admits nothing here)"


def put_first_note(model: str, version: str, golden: str, name: str) -> str:
    """How to pin ``version`` under recipe ``name`` as it is being put
    (``AdmissionRules._put_first``)."""
    return (f"a gate judges under a recipe as it stands, and recipe {name} as it is being "
            "put is not that one: put it first as it will stand but following the active "
            f"version (no model_version), gate {model} {version} under it, "
            f"{gate_call(model, version, golden, name)}, then put it again with the pin")


def stale_note(row: GateReportRow, model: str, why: str, recipes: list[str],
               how: str = NOW, *, golden: str | None = None) -> str:
    """The refusal of a stale pass, after the model's name and version: the report,
    why, and the call that gates again (under the first of ``recipes``, else with no
    recipe named: the card's own; on ``golden``, the set lifecycle.gate.golden names for
    the model, else the pass's own)."""
    golden = golden or row.golden_name
    judging = ("" if how != NOW else
               f"; recipe(s) {', '.join(recipes)} judge {model} now" if recipes else
               f"; no recipe judges {model} now but its card's own "
               f"({default_recipe_name(model)})")
    named = f", \"recipe\": \"{recipes[0]}\"" if recipes else ""
    if how == PUT_FIRST:
        return ("has no passing gate report that judged it as the line would now "
                f"(lifecycle.gate.require_gate): its passing gate report {row.id} {why}; "
                + put_first_note(model, row.candidate_version, golden, recipes[0]))
    return ("has no passing gate report that judged it as the line would now "
            f"(lifecycle.gate.require_gate): its passing gate report {row.id} {why}"
            f"{judging}. Gate it again, {how}: POST /v1/models/{model}/gate "
            f"{{\"version\": \"{row.candidate_version}\", \"golden\": "
            f"\"{golden}\"{named}}} (a report of lineside gate is not kept: it "
            "admits nothing here)")
