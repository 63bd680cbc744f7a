"""Per-frame video analysis throughput on CPU: frames per second, and where the time goes.

    python benchmarks/video.py [--clips 4] [--checkpoint models/emola] [--out FILE]

FABA-Synth expression clips (224 px, 3 s at 10 fps, head motion) are analysed with
:func:`emola.video_analysis.analyze_video` at every frame: decoding, face detection and
landmarks (the checkpoint's backend), the readout head per face, smoothing and key
moments, with and without the descriptions at key moments. The checkpoint (default: the
pipeline's ``models/emola``; run ``dvc repro`` first) gets a readout head when it has none:
a random one, which costs the same time as a trained one.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from harness import ROOT, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--checkpoint", default=str(ROOT / "models/emola"))
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch

    from emola import Analyzer
    from emola.config.schema import GenerationConfig
    from emola.model.readout import ReadoutHead
    from emola.synth.clips import generate_clips
    from emola.video import sample_frames
    from emola.video_analysis import VideoOptions, analyze_video

    if not (Path(args.checkpoint) / "emola_config.json").is_file():
        raise SystemExit(f"{args.checkpoint}: no checkpoint (run `dvc repro`, or pass --checkpoint)")
    torch.set_num_threads(1)
    analyzer = Analyzer.from_checkpoint(args.checkpoint, generation=GenerationConfig(
        temperature=0.01, top_p=0.5, max_new_tokens=args.max_new_tokens))
    model = analyzer.engine.model
    if model.readout is None:
        torch.manual_seed(0)
        model.readout = ReadoutHead(model.base_llava.config.text_config.hidden_size)
    folder = Path(tempfile.mkdtemp(prefix="emola-video-bench-"))
    try:
        clips = generate_clips(folder, args.clips, seed=11, size=224, fps=10.0, seconds=3.0)
        frames = sum(1 for clip in clips for _ in sample_frames(clip))
        started = time.perf_counter()
        for clip in clips:
            list(sample_frames(clip))
        decode_s = time.perf_counter() - started
        results = {"clips": len(clips), "frames": frames, "checkpoint": args.checkpoint, "threads": 1,
                   "decode_frames_per_s": round(frames / decode_s, 1)}
        for describe in (False, True):
            started = time.perf_counter()
            rows = [row for clip in clips for row in analyze_video(analyzer, clip, VideoOptions(
                fps=None, smoothing=3, describe=describe))]
            seconds = time.perf_counter() - started
            key = "with_descriptions" if describe else "per_frame"
            results[key] = {"seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 2),
                            "rows": len(rows), "faces_found": sum(r.status == "ok" for r in rows),
                            "key_moments": sum(r.key_moment for r in rows)}
            print(f"{key:18s} {frames} frames in {seconds:6.1f} s: {frames / seconds:6.2f} frames/s "
                  f"({results[key]['faces_found']} faces, {results[key]['key_moments']} key moments)")
        print(f"decoding alone: {results['decode_frames_per_s']:.0f} frames/s")
        write_results("video", results, args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
