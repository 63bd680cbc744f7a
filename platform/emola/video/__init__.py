"""Video input: decoding and sampling frames (PyAV), following faces across them, writing clips."""

from emola.video.decode import (VIDEO_SUFFIXES, Frame, VideoInfo, VideoLimits, VideoProblem, looks_like_video, probe,
                                sample_frames, upright)
from emola.video.encode import write_video
from emola.video.tracking import FaceTracker, iou

__all__ = ["VIDEO_SUFFIXES", "FaceTracker", "Frame", "VideoInfo", "VideoLimits", "VideoProblem", "iou",
           "looks_like_video", "probe", "sample_frames", "upright", "write_video"]
