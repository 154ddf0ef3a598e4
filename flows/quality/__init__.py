"""Weight-free metrics of a finished job (flicker, appearance, pose fidelity, source PSNR). No Prefect.

    from flows import quality
    metrics = quality.compute_job_metrics(job_dir)   # -> JobMetrics
    quality.write_metrics(job_dir, metrics)          # metrics.json beside result.json
    print(quality.summary_line(metrics))

The modules, each named for what it holds:

- ``pictures``: frames and masks as arrays (any picture, path or array in), grey and Lab
- ``flicker``: optical-flow warp error between consecutive frames, the consistency mask
- ``likeness``: how much a frame still looks like the source: Lab colour distance, background SSIM, PSNR
- ``pose``: pose fidelity (PCK) and the detector, from pose_sources
- ``job_folder``: what a job folder holds for the metrics (result.json, frames, masks, poses)
- ``report``: the metrics.json schema, writing and reading it, the summary line
- ``measure``: every metric of a job folder, step by step (``compute_job_metrics``)

The names below are the public API, importable from here or from their module.
"""

from flows.quality.flicker import PairFlicker, consistent_flow_mask, optical_flow, pair_flicker
from flows.quality.job_folder import NotAFinishedJob
from flows.quality.likeness import Appearance, appearance, masked_ssim, psnr
from flows.quality.measure import compute_frame_metrics, compute_job_metrics
from flows.quality.pictures import ImageLike, as_mask, as_rgb
from flows.quality.pose import PoseDetector, PoseScore, load_pose_detector, pose_fidelity
from flows.quality.report import (
    METRICS_FILE,
    METRICS_VERSION,
    FrameMetrics,
    JobMetrics,
    MetricsSummary,
    PairMetrics,
    read_metrics,
    summary_line,
    write_metrics,
)

__all__ = [
    "METRICS_FILE", "METRICS_VERSION", "Appearance", "FrameMetrics", "ImageLike", "JobMetrics", "MetricsSummary",
    "NotAFinishedJob", "PairFlicker", "PairMetrics", "PoseDetector", "PoseScore", "appearance", "as_mask", "as_rgb",
    "compute_frame_metrics", "compute_job_metrics", "consistent_flow_mask", "load_pose_detector", "masked_ssim",
    "optical_flow", "pair_flicker", "pose_fidelity", "psnr", "read_metrics", "summary_line", "write_metrics",
]
