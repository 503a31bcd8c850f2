"""Reference frames for data/tests/media.rs: a lossy H.264 mp4 with B-frames (ffmpeg's testsrc2
pattern, 160x120, 60 frames at 25 fps, a keyframe every 20) and the SHA-256 of frames as
sleap-io 0.9.5 reads them with each of its readers (opencv, FFMPEG, pyav); they agree.

usage: python scripts/media_fixture.py   (needs sleap-io, opencv-python, av, imageio-ffmpeg)
Writes data/tests/fixtures/testsrc.mp4 and data/tests/fixtures/testsrc_frames.json.
"""
import hashlib
import json
import pathlib
import subprocess

import imageio_ffmpeg
import sleap_io as sio

FRAMES = [0, 1, 19, 20, 21, 38, 59]
here = pathlib.Path(__file__).resolve().parent.parent / "data" / "tests" / "fixtures"
video = here / "testsrc.mp4"
subprocess.run(
    [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
     "-i", "testsrc2=size=160x120:rate=25", "-frames:v", "60", "-c:v", "libx264",
     "-pix_fmt", "yuv420p", "-bf", "3", "-g", "20", "-crf", "28", str(video)],
    check=True,
)
hashes = {}
for plugin in ["opencv", "FFMPEG", "pyav"]:
    v = sio.load_video(str(video), plugin=plugin)
    hashes[plugin] = {str(i): hashlib.sha256(v[i].tobytes()).hexdigest() for i in FRAMES}
    shape = list(v.shape)
assert hashes["opencv"] == hashes["FFMPEG"] == hashes["pyav"], "sleap-io's readers disagree"
(here / "testsrc_frames.json").write_text(
    json.dumps(
        {"sleap_io": sio.__version__, "shape": shape, "sha256_rgb": hashes["opencv"]}, indent=1
    )
    + "\n"
)
print(video, video.stat().st_size, "bytes;", shape)
