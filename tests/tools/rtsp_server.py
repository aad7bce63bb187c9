"""A real RTSP server on loopback for the camera tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 and python3-gi), run with the system Python that has the gi
bindings. Prints its URL, then serves until killed.

usage: /usr/bin/python3 rtsp_server.py PORT [h264|h265]

Without a codec it streams MJPEG over RTP at 30 fps. With one it streams that codec at
30 fps, 160x120 grey 50 for two seconds, then 320x240 grey 200 (a camera switched to another
resolution while streaming): a frame of 160x120 brighter than 125 is a stretched one.
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
