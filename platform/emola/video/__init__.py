"""Video input: decoding and sampling frames (PyAV), and following faces across them."""

from emola.video.decode import Frame, VideoInfo, VideoLimits, VideoProblem, probe, sample_frames, upright
from emola.video.tracking import FaceTracker, iou

__all__ = ["FaceTracker", "Frame", "VideoInfo", "VideoLimits", "VideoProblem", "iou", "probe", "sample_frames",
           "upright"]
