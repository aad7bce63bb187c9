"""Draw docs/line-handshake.png: the wiring of a station and the timing of the PLC handshake.

The timing half is not drawn by hand: it drives the real state machine
(``lineside_inspect.line.station.Station``) through three parts (a verdict, a camera
error, a PLC that never acknowledges) and plots the tags it sets, so the picture cannot
drift from the code. Needs matplotlib (``pip install 'lineside[train]'``). Usage:
    python tools/handshake_diagram.py [docs/line-handshake.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from lineside_inspect.line.station import ErrorCode, Station

LANES = ["Trigger", "TriggerReady", "Busy", "ResultReady", "Pass", "Fail", "ResultAck"]
PLC_OWNED = {"Trigger", "ResultAck"}
ACK_TIMEOUT_MS = 120  # shortened for the picture (the setting's default is 5 s)


def run_station() -> tuple[list[tuple[float, dict[str, object]]], list[tuple[float, str]]]:
    """Tag values after each event, and the step labels, for three parts (times in ms).
    A PLC write shows for the 3 ms Lineside takes to react to it."""
    st = Station("station1", "deeppcb", ack_timeout_s=ACK_TIMEOUT_MS, now=0.0,
                 check_recipe=lambda name: ErrorCode.NONE)
    trace: list[tuple[float, dict[str, object]]] = [(0.0, dict(st.tags))]
    notes: list[tuple[float, str]] = []

    def at(t: float, label: str | None = None) -> None:
        trace.append((t, dict(st.tags)))
        if label:
            notes.append((t, label))

    def plc(tag: str, t: float, label: str | None = None) -> None:
        trace.append((t, {**st.tags, tag: True}))  # the PLC's write, not yet handled
        if label:
            notes.append((t, label))
        st.plc_write(tag, True, t + 3)
        at(t + 3)

    # part 1: a verdict (first frame ~17 ms after the trigger at 30 fps, ~35 ms inference)
    plc("Trigger", 20, "1 PLC sets Trigger;\n2 Lineside: Busy")
    st.finished(False, 2, "9f3c…", 72)
    at(72, "3 Fail, DefectCount 2,\nthen ResultReady")
    plc("ResultAck", 92, "4 PLC sets ResultAck;\n5 Lineside: TriggerReady")
    # part 2: the camera is offline -> Fail with ErrorCode 1, never Pass
    plc("Trigger", 140)
    st.failed(ErrorCode.CAMERA_OFFLINE, 150)
    at(150, "camera offline:\nFail, ErrorCode 1")
    plc("ResultAck", 170)
    # part 3: a pass the PLC never acknowledges -> dropped after the ack timeout
    plc("Trigger", 215)
    st.finished(True, 0, "a17e…", 268)
    at(268, "Pass, ResultReady")
    st.tick(268 + ACK_TIMEOUT_MS)
    at(268 + ACK_TIMEOUT_MS, "no ResultAck within ack_timeout_s:\nFail, ErrorCode 5, TriggerReady")
    at(440)
    return trace, notes


def draw_wiring(ax: plt.Axes) -> None:
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 34)
    ax.axis("off")
    boxes = {
        "sensor": (2, 24, 16, 8, "part sensor\n(light barrier)"),
        "camera": (2, 3, 16, 9, "camera\n(USB / GigE / RTSP)"),
        "lineside": (30, 3, 26, 20, "Lineside edge box\n\nOPC UA  opc.tcp://…:4840/lineside/\n"
                     "Modbus TCP  :502 (demo :5020)\nMQTT events → MES / historian"),
        "plc": (68, 10, 14, 20, "PLC\n(S7-1500,\nCODESYS)"),
        "gate": (86, 15, 12, 10, "reject gate\n/ diverter"),
    }
    for key, (x, y, w, h, text) in boxes.items():
        color = "#dbeafe" if key == "lineside" else "#f3f4f6"
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4", fc=color, ec="#374151"))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)

    def arrow(a: tuple[float, float], b: tuple[float, float], label: str, both: bool = False) -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="<->" if both else "->", mutation_scale=12,
                                     color="#374151"))
        ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 1.2, label, ha="center", fontsize=7)

    arrow((18.8, 7.5), (29.2, 7.5), "frames")
    arrow((18.8, 28), (67.2, 28), "24 V digital input")
    arrow((56.8, 15), (67.2, 15), "Ethernet: handshake", both=True)
    arrow((82.8, 20), (85.2, 20), "")


def draw_timing(ax: plt.Axes, trace: list[tuple[float, dict[str, object]]],
                notes: list[tuple[float, str]]) -> None:
    times = [t for t, _ in trace]
    for i, lane in enumerate(LANES):
        base = (len(LANES) - 1 - i) * 1.5
        values = [1.0 if tags[lane] else 0.0 for _, tags in trace]
        color = "#b45309" if lane in PLC_OWNED else "#1d4ed8"
        ax.step(times, [base + 0.9 * v for v in values], where="post", color=color, lw=1.8)
        owner = "PLC" if lane in PLC_OWNED else "Lineside"
        ax.text(-6, base + 0.45, f"{lane}\n({owner})", ha="right", va="center", fontsize=8,
                color=color)
    codes = [int(tags["ErrorCode"]) for _, tags in trace]  # type: ignore[call-overload]
    base = -1.5
    ax.step(times, [base + 0.45] * len(times), where="post", color="#6b7280", lw=0.6)
    start = 0  # one label per run of the same code
    for i in range(1, len(trace) + 1):
        if i == len(trace) or codes[i] != codes[start]:
            t0, t1 = times[start], times[min(i, len(trace) - 1)]
            ax.text((t0 + t1) / 2, base + 0.45, str(codes[start]), ha="center", va="center",
                    fontsize=8, bbox={"fc": "white", "ec": "none", "pad": 0.5})
            if i < len(trace):
                ax.axvline(times[i], ymin=0.0, ymax=0.06, color="#6b7280", lw=0.8)
            start = i
    ax.text(-6, base + 0.45, "ErrorCode\n(Lineside)", ha="right", va="center", fontsize=8,
            color="#1d4ed8")
    top = len(LANES) * 1.5
    for i, (t, label) in enumerate(notes):
        ax.axvline(t, color="#9ca3af", lw=0.6, ls="--")
        last = i == len(notes) - 1
        ax.text(t - 1 if last else t + 1, top + 0.2 + 1.3 * (i % 2), label, fontsize=7,
                va="bottom", ha="right" if last else "left")
    ax.set_xlim(-2, 440)
    ax.set_ylim(-2.2, top + 3.8)
    ax.set_yticks([])
    ax.set_xlabel(f"time, ms (illustrative; ack timeout shortened to {ACK_TIMEOUT_MS} ms)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def main(out: Path) -> None:
    trace, notes = run_station()
    fig, (wiring, timing) = plt.subplots(2, 1, figsize=(12, 9.5),
                                         gridspec_kw={"height_ratios": [1, 2.4]})
    draw_wiring(wiring)
    wiring.set_title("Wiring of one station", fontsize=11, loc="left")
    draw_timing(timing, trace, notes)
    timing.set_title("The handshake: a verdict, a camera error, a PLC that never acknowledges "
                     "(drawn by the real state machine)", fontsize=11, loc="left")
    fig.subplots_adjust(left=0.13, right=0.98, top=0.96, bottom=0.06, hspace=0.25)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/line-handshake.png"))
