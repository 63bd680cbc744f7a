"""Video input: decoding and sampling frames (PyAV), following faces across them, writing clips."""

from emola.video.decode import (CONTAINERS, FPS_RANGE, VIDEO_SUFFIXES, Frame, VideoInfo, VideoLimits, VideoProblem,
                                container_format, looks_like_video, probe, sample_frames, upright)
from emola.video.encode import write_video
from emola.video.tracking import FaceTracker, iou

__all__ = ["CONTAINERS", "FPS_RANGE", "VIDEO_SUFFIXES", "FaceTracker", "Frame", "VideoInfo", "VideoLimits", "VideoProblem",
           "container_format", "iou", "looks_like_video", "probe", "sample_frames", "upright", "write_video"]
