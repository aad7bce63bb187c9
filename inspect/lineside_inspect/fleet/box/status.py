"""The box's status report to its hub (``POST {STATUS}``) every few seconds: its site and
line, Lineside version, the models it holds (active, shadow, standby versions, each with
its sha256), whether it is ready, its forwarding backlog and lag, the model assignments
it could not apply, and its recipes in fail-rate alarm. The hub's fleet page shows the
latest one and how long ago it came; a box that cannot reach the hub just tries again
next time."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from lineside_inspect.fleet.box.client import HubClient, HubRefused
from lineside_inspect.fleet.box.periodic import HubTask, PeriodicHubTask
from lineside_inspect.fleet.protocol import STATUS, BoxStatus, ModelRunning
from lineside_inspect.version import __version__

log = logging.getLogger("lineside.fleet")
INTERVAL_S = 5.0


def models_running(app: Any) -> list[ModelRunning]:
    """Every loaded model version with its role; the shadow (lifecycle) when one runs."""
    out: list[ModelRunning] = []
    lifecycle = getattr(app.state, "lifecycle", None)
    shadow = getattr(lifecycle, "shadow", None)
    for name, slot in app.state.registry.models().items():
        for version, detector in slot.versions.items():
            role = "active" if version == slot.active else "standby"
            try:
                out.append(ModelRunning(name=name, version=version, sha256=detector.card.sha256,
                                        role=role))
            except ValidationError:  # a name the hub would refuse: left out, not the report
                log.debug("fleet: model %s %s not reported (name or version)", name, version)
        session = shadow.session(name) if shadow is not None else None
        if session is not None:
            with contextlib.suppress(ValidationError):
                out.append(ModelRunning(name=name, version=session.version,
                                        sha256=session.sha256, role="shadow"))
    return out


def box_status(app: Any) -> BoxStatus:
    """What this box reports now."""
    fleet = app.state.settings.fleet
    forwarder = getattr(app.state, "forwarder", None)
    puller = getattr(app.state, "fleet_models", None)
    return BoxStatus(
        site=fleet.site, line=fleet.line, version=__version__[:64], models=models_running(app),
        ready=bool(app.state.ready),
        forward_backlog=int(getattr(forwarder, "backlog", 0) or 0),
        forward_lag_s=float(getattr(forwarder, "lag_s", 0.0) or 0.0) if forwarder else None,
        model_errors=[e[:500] for e in (puller.errors() if puller is not None else [])][:32],
        alarms=alarms_raised(app))


def alarms_raised(app: Any) -> list[str]:
    """One line per recipe in fail-rate alarm: the recipe, its models and both rates."""
    alarm = getattr(getattr(app.state, "lifecycle", None), "alarm", None)
    if alarm is None:
        return []
    return [(f"{t['recipe']} ({t['judged_by']}): {t['recent_fail_rate']:.1%} of the last "
             f"{t['recent_inspections']} failed, usually {t['usual_fail_rate']:.1%}")[:500]
            for t in alarm.raised()][:32]


class StatusReporter(HubTask):
    """A thread posting :func:`box_status` every ``interval_s`` (a report that fails is
    not retried sooner or later: the next one is as fresh)."""

    def __init__(self, app: Any, client: HubClient, interval_s: float = INTERVAL_S) -> None:
        self.app = app
        self.client = client
        self.interval_s = interval_s
        self.reported = 0
        self.hub_takes_alarms: bool | None = None  # unknown until a report carried some
        self.loop = PeriodicHubTask(
            "status", self._step, interval_s=interval_s, retry_min_s=interval_s,
            retry_max_s=interval_s, waiting=f"the next report goes in {interval_s:g} s",
            metrics=getattr(app.state, "metrics", None))

    def report_once(self) -> None:
        status = box_status(self.app)
        if status.alarms and self.hub_takes_alarms is not False:
            try:
                self.client.request("POST", self.client.path(STATUS), body=status)
            except HubRefused as exc:
                # a hub of an older release refuses the field it does not know: the rest of
                # the report must still get through (asked again after its restart)
                if "alarms" not in str(exc):
                    raise
                self.hub_takes_alarms = False
                log.warning("fleet: the hub does not take fail-rate alarms in status reports "
                            "(an older release): reporting without them")
            else:
                self.hub_takes_alarms = True
                self.reported += 1
                return
        self.client.request("POST", self.client.path(STATUS),
                            body=status.model_copy(update={"alarms": []}))
        self.reported += 1

    def _step(self) -> bool:
        self.report_once()
        return False


def setup(app: Any, settings: Any) -> None:
    """Status reports on ``app.state.fleet_status`` every ``fleet.status_interval_s``; call
    after the hub client's start-up hook is added."""
    app.state.fleet_status = None
    interval_s = settings.fleet.status_interval_s

    def start() -> None:
        client = getattr(app.state, "hub_client", None)
        if client is None:
            return
        reporter = StatusReporter(app, client, interval_s)
        reporter.start()
        app.state.fleet_status = reporter

    def stop() -> None:
        if app.state.fleet_status is not None:
            app.state.fleet_status.stop()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
