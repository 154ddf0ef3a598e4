"""The frames of a running job, shown as they arrive: one markdown artifact, a new version per chunk.

The images are links to the frames through the media server (``media_url``), so the page stays
small and the browser fetches the pictures; the finished job's outputs page is a separate
artifact and is not touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from uuid import UUID

from flows.jobdir.layout import JobFolder
from flows.ui.artifacts import artifact_key, job_label, md_text
from flows.ui.media import media_url

# Newest first, at most this many pictures on the page (a long job would make it huge).
MAX_SHOWN = 48


def frames_so_far_markdown(job_dir: str | os.PathLike, indices: list[int], total: int, label: str) -> str:
    folder = JobFolder(job_dir)
    root = Path(job_dir).absolute().parent
    shown = sorted(indices)[-MAX_SHOWN:]
    lines = [f"# Frames so far: {len(indices)} of {total}", "",
             f"Job {md_text(label)}. Updated as each render chunk finishes; the outputs page follows when the job "
             "is stitched.", ""]
    if len(indices) > len(shown):
        lines += [f"The last {len(shown)} frames:", ""]
    lines.append(" ".join(f"![frame {i}]({media_url(folder.frame(i), root)})" for i in shown))
    return "\n".join(lines)


def publish_frames_so_far(job_dir: str | os.PathLike, indices: list[int], total: int, job_hash: str,
                          job_name: Optional[str] = None) -> UUID:
    """A new version of the job's "frames so far" artifact (same key: the UI shows the latest)."""
    from prefect.artifacts import create_markdown_artifact

    label = job_label(job_hash, job_name)
    return create_markdown_artifact(
        key=artifact_key("frames-so-far", job_hash, job_name),
        markdown=frames_so_far_markdown(job_dir, indices, total, label),
        description=f"Frames of job {md_text(label)} rendered so far",
    )


__all__ = ["MAX_SHOWN", "frames_so_far_markdown", "publish_frames_so_far"]
