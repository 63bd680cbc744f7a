"""Per-frame video analysis on FABA-Synth expression clips, on CPU: throughput and accuracy.

    python benchmarks/video.py [--clips 20] [--checkpoint models/emola] [--out FILE]

Clips of 224 px, 3 s at 10 fps (neutral, onset, apex, offset, head motion) are analysed
with :func:`emola.video_analysis.analyze_video` at every frame: decoding, face detection
and landmarks (the checkpoint's backend), the readout head per face, smoothing and key
moments.

- Throughput: frames/s of the first four clips, with and without the descriptions at key
  moments.
- Accuracy of the readout head (the pipeline's trained model; run ``dvc repro`` first),
  with and without smoothing: emotion accuracy and AU macro F1 at each clip's true apex
  frame, and how far the key moment of the clip's face is from the true apex (frames).
  A checkpoint without a head gets a random one: then only the throughput means anything.
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
    parser.add_argument("--clips", type=int, default=20)
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
    trained = model.readout is not None
    if not trained:
        torch.manual_seed(0)
        model.readout = ReadoutHead(model.base_llava.config.text_config.hidden_size)
    folder = Path(tempfile.mkdtemp(prefix="emola-video-bench-"))
    try:
        all_clips = generate_clips(folder / "clips", args.clips, seed=11, size=224, fps=10.0, seconds=3.0)
        clips = all_clips[:4]
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
        results["head_trained"] = trained
        results["accuracy"] = accuracy(analyzer, all_clips)
        for name, a in results["accuracy"].items():
            print(f"{name:12s} at the apex ({a['apex_faces']} of {a['clips']} clips with the face found): "
                  f"emotion accuracy {a['emotion_accuracy']:.1f}, AU macro F1 {a['au_macro_f1']:.1f}; "
                  f"key moment to apex: median {a['key_to_apex_median']} frames, within 3 frames {a['key_within_3']}")
        write_results("video", results, args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def accuracy(analyzer, clips) -> dict:
    """The head's emotion accuracy and AU macro F1 at each clip's true apex, and key moments against it, without
    smoothing (``smoothing_1``) and over 3 frames (``smoothing_3``): one pass per clip with the faces found by the
    checkpoint's detector, scored by the video stage's :func:`~emola.video_batch.score_clips`."""
    from emola.video_analysis import VideoOptions
    from emola.video_batch import analyze_file, score_clips

    options = VideoOptions(fps=None, smoothing=3, describe=False)
    head = score_clips([analyze_file(analyzer, clip, options, landmarks="detect") for clip in clips])
    out = {}
    for name, variant in (("smoothing_1", "raw"), ("smoothing_3", "smoothed")):
        apex, keys = head["apex"][variant], head["key_moments"][variant]
        out[name] = {"clips": len(clips), "apex_faces": apex["n"],
                     "emotion_accuracy": apex["emotion_accuracy"] if apex["n"] else float("nan"),
                     "au_macro_f1": apex["au_macro_f1"] if apex["n"] else float("nan"),
                     "key_to_apex_median": keys["median_frames_from_apex"],
                     "key_within_3": f"{keys['within_3_frames']}/{keys['faces']}"}
    return out


if __name__ == "__main__":
    main()
