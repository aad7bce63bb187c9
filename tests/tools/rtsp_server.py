"""A real RTSP server on loopback for the camera tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 and python3-gi), run with the system Python that has the gi
bindings. Prints its URL, then serves until killed.

usage: /usr/bin/python3 rtsp_server.py PORT [h264|h265 [MODE]]

Without a codec it streams MJPEG over RTP at 30 fps. With one it streams that codec at
30 fps, 160x120 grey 50 for two seconds, then 320x240 grey 200 (a camera switched to another
resolution while streaming): a frame of 160x120 brighter than 125 is a stretched one.

MODE streams frames encoded once at start, looped (no encoder running while served):
- ``profile144``: 320x240 H.264 whose SPS says profile_idc 144 (the High 4:4:4 of 2005,
  withdrawn; FFmpeg still decodes it, Lineside's SPS parser does not know it)
- ``WxH``: that size, each frame's number (0-255) in 16 blocks on its top left, and the
  time each frame was sent (``time.monotonic()``) written as ``number time`` lines to the
  file ``$RTSP_SENT_LOG`` when set (frame age at read, tools/h26x_bench.py)
- ``flip``: ``WxH`` frames alternating 320x240 and 640x480 every second
"""

import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1] if len(sys.argv) > 1 else "8554"
codec = sys.argv[2] if len(sys.argv) > 2 else "mjpeg"
mode = sys.argv[3] if len(sys.argv) > 3 else ""
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
if codec == "mjpeg":
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball "
        "! video/x-raw,format=I420,width=320,height=240,framerate=30/1 "
        "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
    )
elif mode:
    import time

    ENCODE = {"h264": "openh264enc bitrate=2000000 gop-size=30",
              "h265": "x265enc tune=zerolatency key-int-max=30"}[codec]

    def frames(width: int, height: int, count: int) -> list[bytes]:
        """Moving noise, grey 100 on average, each frame's number in 16 blocks of 16x16."""
        noise = os.urandom(width * height).translate(bytes(60 + i * 80 // 256 for i in range(256)))
        out = []
        for n in range(count):
            shift = n * 37 % len(noise)
            luma = bytearray(noise[shift:] + noise[:shift])
            for row in range(16):
                at = row * width
                luma[at:at + 256] = b"".join((b"\xeb" if n >> bit & 1 else b"\x10") * 16
                                             for bit in range(16))
            out.append(bytes(luma) + bytes([128]) * (width * height // 2))
        return out

    def encoded(width: int, height: int, count: int) -> list[bytes]:
        """``count`` frames encoded once (Annex B access units; a key frame every 30)."""
        pipe = Gst.parse_launch(
            f"appsrc name=src format=time caps=video/x-raw,format=I420,width={width},"
            f"height={height},framerate=30/1 ! videoconvert ! {ENCODE} "
            "! appsink name=sink sync=false max-buffers=0")
        src, sink = pipe.get_by_name("src"), pipe.get_by_name("sink")
        pipe.set_state(Gst.State.PLAYING)
        for n, data in enumerate(frames(width, height, count)):
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts, buf.duration = n * Gst.SECOND // 30, Gst.SECOND // 30
            src.emit("push-buffer", buf)
        src.emit("end-of-stream")
        out = []
        while (sample := sink.emit("pull-sample")) is not None:
            buffer = sample.get_buffer()
            out.append(buffer.extract_dup(0, buffer.get_size()))
        pipe.set_state(Gst.State.NULL)
        return out

    def escape(rbsp: bytes) -> bytes:
        out, zeros = bytearray(), 0
        for byte in rbsp:
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)

    def profile144(unit: bytes) -> bytes:
        """A baseline SPS as profile 144: its chroma format (4:2:0), bit depths (8) and no
        scaling matrices written in after seq_parameter_set_id, as that profile has them."""
        bits = "".join(f"{b:08b}" for b in unit[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
        bits = bits[:bits.rindex("1")]  # the stop bit and its padding
        at = 24
        while bits[at] == "0":
            at += 1
        at += at - 24 + 1  # past seq_parameter_set_id, ue(v)
        bits = f"{144:08b}" + bits[8:at] + "010" + "1" + "1" + "0" + "0" + bits[at:] + "1"
        bits += "0" * (-len(bits) % 8)
        return unit[:1] + escape(int(bits, 2).to_bytes(len(bits) // 8, "big"))

    if mode == "profile144":
        units = [[u.rstrip(b"\x00") for u in au.split(b"\x00\x00\x01")] for au in encoded(320, 240, 60)]
        loop = [b"".join(b"\x00\x00\x00\x01" + (profile144(u) if u[0] & 0x1F == 7 else u)
                         for u in au if u) for au in units]
    elif mode == "flip":
        loop = encoded(320, 240, 30) + encoded(640, 480, 30)
    else:
        loop = encoded(*map(int, mode.split("x")), 90)
    # open while the server runs (it is killed, never returns)
    sent_log = open(os.environ["RTSP_SENT_LOG"], "a") if os.environ.get("RTSP_SENT_LOG") else None  # noqa: SIM115
    caps = "video/x-h264" if codec == "h264" else "video/x-h265"
    pay = "rtph264pay" if codec == "h264" else "rtph265pay"
    factory.set_launch(f"( appsrc name=src is-live=true format=time do-timestamp=true "
                       f"caps={caps},stream-format=byte-stream,alignment=au "
                       f"! {pay} name=pay0 pt=96 config-interval=-1 )")
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    def configure_looped(_factory, media):  # type: ignore[no-untyped-def]
        src = media.get_element().get_child_by_name("src")
        start, count = time.monotonic(), [0]

        def push() -> bool:
            n = count[0]
            count[0] += 1
            if sent_log is not None:
                sent_log.write(f"{n % len(loop)} {time.monotonic()}\n")
                sent_log.flush()
            buf = Gst.Buffer.new_wrapped(loop[n % len(loop)])
            buf.duration = Gst.SECOND // 30
            if src.emit("push-buffer", buf) == Gst.FlowReturn.OK:  # else the media is gone
                # at 30 fps from the start, not 30 fps after each push's own delay
                GLib.timeout_add(max(1, int((start + count[0] / 30 - time.monotonic()) * 1000)), push)
            return False

        GLib.idle_add(push)

    factory.connect("media-configure", configure_looped)
else:
    NOISE = {w: os.urandom(w * h) for w, h in ((160, 120), (320, 240))}
    LEVELS = {g: bytes(g - 40 + i * 80 // 256 for i in range(256)) for g in (50, 200)}
    encode = {"h264": "openh264enc bitrate=2000000 ! rtph264pay",
              "h265": "x265enc tune=zerolatency ! rtph265pay"}[codec]
    factory.set_launch(f"( appsrc name=src is-live=true format=time do-timestamp=true "
                       f"! videoconvert ! {encode} name=pay0 pt=96 config-interval=-1 )")
    # interleaved in the RTSP connection: no UDP ports taken on the test machine
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    def configure(_factory, media):  # type: ignore[no-untyped-def]
        src = media.get_element().get_child_by_name("src")
        count = [0]

        def push() -> bool:
            width, height, grey = (160, 120, 50) if count[0] < 60 else (320, 240, 200)
            caps = Gst.Caps.from_string(f"video/x-raw,format=I420,width={width},height={height},"
                                        "framerate=30/1")
            # noise moving each frame, grey on average: packets of a camera's size, not
            # the few bytes of a still picture
            luma = NOISE[width].translate(LEVELS[grey])
            shift = count[0] * 37 % len(luma)
            data = luma[shift:] + luma[:shift] + bytes([128]) * (width * height // 2)
            buf = Gst.Buffer.new_wrapped(data)
            buf.duration = Gst.SECOND // 30
            count[0] += 1
            # a sample carries its caps in order with the frames: the switch is exact
            return src.emit("push-sample", Gst.Sample.new(buf, caps, None, None)) == Gst.FlowReturn.OK

        GLib.timeout_add(33, push)

    factory.connect("media-configure", configure)
factory.set_shared(True)
server.get_mount_points().add_factory("/line", factory)
if not server.attach(None):  # the port is taken: say nothing, so the caller picks another
    sys.exit(3)
print(f"rtsp://127.0.0.1:{port}/line", flush=True)
GLib.MainLoop().run()
