"""Serve an H.264 Matroska clip over RTSP for the video source tests: a real server.

Run by Debian's own ``/usr/bin/python3`` (its ``python3-gi`` is built for that interpreter,
not the venv's): ``/usr/bin/python3 tests/rtsp_server.py CLIP.mkv PORT [MOUNT]``.  Each
client gets the clip from its start, paced by the pipeline clock as a camera would send it;
the H.264 is payloaded as it is (no re-encode).  Prints ``ready`` once it listens.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
clip, port = sys.argv[1], sys.argv[2]
mount = sys.argv[3] if len(sys.argv) > 3 else "/cam"
server = GstRtspServer.RTSPServer.new()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory.new()
factory.set_launch(f'( filesrc location="{clip}" ! matroskademux ! rtph264pay name=pay0 pt=96 )')
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
