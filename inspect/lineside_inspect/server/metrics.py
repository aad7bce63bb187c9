"""Prometheus metrics, one registry per app (so tests and several apps don't collide)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

# no ``<counter>_created`` series: in the text format each counter and histogram series
# came with an undocumented gauge of its creation time, twice the series Prometheus keeps
# (rate() and increase() do not need them). For the process: every registry Lineside
# makes is for its /metrics
disable_created_metrics()

STAGES = ("decode", "preprocess", "infer", "postprocess", "total")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inspections = Counter("lineside_inspections", "Inspections by verdict",
                                   ["verdict", "recipe", "camera"], registry=r)
        self.defects = Counter("lineside_defects", "Counted defects by class", ["label"],
                               registry=r)
        # why parts failed: a camera with its lens cap on showed as a run of fails with no
        # defects, like a bad batch, on a dashboard. ``rule`` is a reason's rule (five
        # values, schemas.Reason), so the series stay those of lineside_inspections x 5
        self.fail_reasons = Counter(
            "lineside_fail_reasons",
            "Failed inspections by reason rule (critical, max_count, anomaly, "
            "reference_mismatch; blank_frame: nothing to judge, a lens cap or a lamp off), "
            "each rule once per inspection", ["rule", "recipe", "camera"], registry=r)
        self.latency = Histogram(
            "lineside_stage_seconds", "Latency per stage", ["stage"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 5.0))
        self.queue = Gauge("lineside_queue_depth", "Requests in progress or queued", registry=r)
        self.errors = Counter("lineside_request_errors", "Refused requests by code", ["code"],
                              registry=r)
        # a series per model, its name a label value: the model names were once the label
        # names of one series, and a name's '-' and '.' both became '_' (deeppcb-good as
        # deeppcb_good): two models a-b and a.b gave a sample with a label twice, which
        # Prometheus refuses, failing the whole scrape
        self.model_info = Info("lineside_model", "The active version of each model",
                               ["model"], registry=r)
        # the versions in memory (each holds onnxruntime sessions): set at each scrape
        self.model_loaded = Gauge(
            "lineside_model_version_loaded",
            "1 for each model version loaded in memory (the active one, those kept for a "
            "rollback or pinned, up to keep_loaded per model)", ["model", "version"], registry=r)
        self.camera_state = Gauge("lineside_camera_online", "1 when the camera delivers frames",
                                  ["camera"], registry=r)
        self.camera_fps = Gauge("lineside_camera_fps", "Frames per second read", ["camera"],
                                registry=r)
        self.camera_reconnects = Gauge("lineside_camera_reconnects", "Reconnects so far",
                                       ["camera"], registry=r)
        # line outputs: MQTT events and the store's outbox they wait in. Registered only
        # where MQTT is configured (use_mqtt): a box without it exported
        # lineside_mqtt_connected 0, and an alert on it fired on every such box
        self.mqtt_connected = Gauge("lineside_mqtt_connected", "1 while connected to the MQTT broker",
                                    registry=None)
        self.outbox_backlog = Gauge("lineside_outbox_backlog", "Events waiting for delivery",
                                    registry=None)
        self.outbox_lag = Gauge("lineside_outbox_lag_seconds",
                                "Age of the oldest event waiting for delivery (0: none)",
                                registry=None)
        self.mqtt_delivered = Counter("lineside_mqtt_events_delivered",
                                      "Events the MQTT broker acknowledged", registry=None)
        self._mqtt_registered = False
        self.store_refused = Gauge(
            "lineside_store_refused",
            "Inspections the database refused, kept aside in the journal's refused/ folder",
            registry=r)
        # a database down (or its login refused, its tables dropped) under a running box:
        # verdicts go on into the journal and /readyz stays ready, so these say it
        self.store_writer_failing = Gauge(
            "lineside_store_writer_failing",
            "1 while the store's writer cannot apply the journal to the database (down, "
            "refusing the login, its tables gone, a lock); acknowledged inspections wait "
            "in the journal meanwhile", registry=r)
        self.store_unapplied = Gauge(
            "lineside_store_unapplied",
            "Inspections acknowledged (stored: true) and waiting in the journal to be "
            "applied to the database", registry=r)
        # a recipe's fail rate watched for a jump (lifecycle/alarm.py)
        self.recent_fail_rate = Gauge(
            "lineside_recent_fail_rate",
            "Fail rate over the recipe's last lifecycle.fail_rate_alarm.window inspections "
            "(NaN: none yet)", ["recipe"], registry=r)
        self.fail_rate_alarm = Gauge(
            "lineside_fail_rate_alarm",
            "1 while the recipe's recent fail rate is above the bound its usual rate sets",
            ["recipe"], registry=r)
        # labelled children by label values: prometheus_client's labels() validates and
        # locks on every call, five or more times per inspection on the hot path
        self._children: dict[tuple[Any, ...], Any] = {}

    def use_mqtt(self) -> None:
        """Export the MQTT and outbox figures (an MQTT publisher is configured); once."""
        if not self._mqtt_registered:
            self._mqtt_registered = True
            for metric in (self.mqtt_connected, self.outbox_backlog, self.outbox_lag,
                           self.mqtt_delivered):
                self.registry.register(metric)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*values))
        return child

    def count_inspection(self, verdict: str, recipe: str, camera: str, labels: Iterable[str],
                         timings_ms: Mapping[str, float], rules: Iterable[str] = ()) -> None:
        """One inspection: its verdict, the rules of its reasons to fail, its counted
        defects and its stage latencies."""
        self._child(self.inspections, verdict, recipe, camera).inc()
        for rule in set(rules) if verdict == "fail" else ():  # two critical classes: one fail
            self._child(self.fail_reasons, rule, recipe, camera).inc()
        for label in labels:
            self._child(self.defects, label).inc()
        for stage, ms in timings_ms.items():
            self._child(self.latency, stage).observe(ms / 1000)

    def set_fail_rate(self, recipe: str, recent: float | None, alarm: bool) -> None:
        """A recipe's recent fail rate (None: nothing counted yet) and alarm state."""
        self._child(self.recent_fail_rate, recipe).set(float("nan") if recent is None else recent)
        self._child(self.fail_rate_alarm, recipe).set(1 if alarm else 0)

    def set_loaded(self, loaded: Iterable[tuple[str, str]]) -> None:
        """The ``(model, version)`` pairs loaded now; series of versions gone are removed."""
        now = set(loaded)
        for labels in {tuple(s.labels.values()) for m in self.model_loaded.collect()
                       for s in m.samples} - now:
            with contextlib.suppress(KeyError):
                self.model_loaded.remove(*labels)
        for model, version in now:
            self.model_loaded.labels(model, version).set(1)

    def set_active(self, active: Mapping[str, str]) -> None:
        """Each model's active version (``""``: none); series of models gone are removed."""
        for model in {s.labels["model"] for m in self.model_info.collect()
                      for s in m.samples} - set(active):
            with contextlib.suppress(KeyError):
                self.model_info.remove(model)
        for model, version in active.items():
            self.model_info.labels(model).info({"version": version})

    def drop_fail_rate(self, recipe: str) -> None:
        """A recipe gone: its fail-rate series go too (an alarm must not outlive it)."""
        for metric in (self.recent_fail_rate, self.fail_rate_alarm):
            self._children.pop((metric, recipe), None)
            with contextlib.suppress(KeyError):  # never set
                metric.remove(recipe)
