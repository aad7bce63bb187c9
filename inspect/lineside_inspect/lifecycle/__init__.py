"""Model lifecycle on the box: golden sets, the gate, shadow mode, watched rollout,
active-learning capture and lineage.

A room of its own on the edge side (no torch): it depends on the inspection service, the
store and the registry, never the reverse; the server wires it in (``install``) and the
admin routes call it through ``app.state.lifecycle``. Importing this package imports
nothing else, so ``config`` can read its settings without pulling in the rest.
"""
