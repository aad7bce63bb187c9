"""A real RTSP server on loopback for the camera tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0 and python3-gi), run with the system Python that has the gi
bindings. Streams MJPEG over RTP at 30 fps; prints its URL, then serves until killed.

usage: /usr/bin/python3 rtsp_server.py PORT
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1] if len(sys.argv) > 1 else "8554"
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=30/1 "
    "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/line", factory)
if not server.attach(None):  # the port is taken: say nothing, so the caller picks another
    sys.exit(3)
print(f"rtsp://127.0.0.1:{port}/line", flush=True)
GLib.MainLoop().run()
