"""A bounded cache: `cache` counts what the output folder holds, `cache prune` keeps what kept jobs need."""

import json
import os
import time
from pathlib import Path

import pytest

from flows import AnimationJob, animate
from flows.cli import main
from flows.jobdir import cache, frames_io
from flows.jobdir.layout import FrameStore, VersionsFolder
from flows.job.files import finished_result

from conftest_jobs import cat, tiny_job  # noqa: F401 - cat is a fixture

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROMPTS = [f"a photo of a cat, pose {i}" for i in range(8)]


def job(cat, out, prompts, name=None) -> AnimationJob:
    return tiny_job(cat, out, prompts, name=name)


def aged(result, seconds_ago: float) -> None:
    """Make a job folder look last written ``seconds_ago``."""
    stamp = time.time() - seconds_ago
    for name in ("result.json", "job.json"):
        os.utime(Path(result.job_dir) / name, (stamp, stamp))


@pytest.fixture
def three_jobs(cat, tmp_path):
    """Three jobs of one name, oldest first; the second and third share two frames."""
    out = tmp_path / "out"
    jobs = [job(cat, out, PROMPTS[0:2], "walk"), job(cat, out, PROMPTS[2:5], "walk"), job(cat, out, PROMPTS[3:6], "walk")]
    results = [animate(j) for j in jobs]
    for r, age in zip(results, (3000, 2000, 1000)):
        aged(r, age)
    return out, jobs, results


def test_usage_counts_each_kind_and_linked_frames_once(three_jobs):
    out, _, results = three_jobs
    held = cache.usage(out)
    assert held.counts() == {"inversions": 1, "frames": 6, "jobs": 3, "sweeps": 0}
    store = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in FrameStore.of(out).path.iterdir()}
    assert held.frames.bytes == sum(store.values())
    own = {}
    for r in results:
        for p in Path(r.job_dir).rglob("*"):
            st = p.stat()
            if p.is_file() and (st.st_dev, st.st_ino) not in store:
                own[(st.st_dev, st.st_ino)] = st.st_size
    assert held.jobs.bytes == sum(own.values())  # a frame linked from the store is counted there only
    assert os.stat(results[0].frames[0]).st_nlink == 2  # this file system has hard links: presented by link


def test_prune_under_a_budget_keeps_the_newest_jobs_complete(cat, three_jobs):
    out, jobs, results = three_jobs
    newest_two = cache.usage(out).total - cache.usage(out).jobs.bytes // 3 - 200  # not room for all three
    report = cache.prune(out, max_bytes=newest_two)
    assert Path(results[0].job_dir) in report.removed and report.freed > 0
    assert [p.name for p in report.kept_jobs] == [Path(r.job_dir).name for r in results[1:]]
    for j in jobs[1:]:
        assert finished_result(j) is not None  # frames verified, outputs there
    assert len(FrameStore.of(out).entries()) == 4  # the first job's 2 frames went with it
    assert cache.usage(out).total <= newest_two
    versions = VersionsFolder.of(out, "walk")
    assert [e["job_hash"] for e in json.loads(versions.versions.read_text())] == [r.job_hash for r in results[1:]]
    # The pruned job renders again, correctly.
    again = animate(jobs[0])
    assert again.frames_rendered == 2 and finished_result(jobs[0]) is not None


def test_keep_last_and_older_than(three_jobs):
    out, _, results = three_jobs
    dry = cache.prune(out, keep_last=2, dry_run=True)
    assert dry.removed[0] == Path(results[0].job_dir) and len(dry.removed) == 1 + 2 * 2  # the job, 2 PNGs + digests
    assert Path(results[0].job_dir).is_dir() and all(p.exists() for p in dry.removed)  # a dry run removes nothing
    report = cache.prune(out, older_than=1500)
    assert [p.name for p in report.kept_jobs] == [Path(results[2].job_dir).name]
    assert VersionsFolder.of(out, "walk").latest.resolve() == Path(results[2].job_dir).resolve()
    assert cache.usage(out).frames.count == 3


def test_a_job_a_run_holds_is_never_pruned(three_jobs):
    out, _, results = three_jobs
    oldest = Path(results[0].job_dir)
    with frames_io.folder_lock(oldest):
        report = cache.prune(out, keep_last=0)
    assert oldest in report.busy and oldest.is_dir()
    assert all(FrameStore.of(out).frame(k).is_file()
               for k in json.loads((oldest / "job.json").read_text())["frame_keys"])
    assert not Path(results[1].job_dir).exists()


def test_cache_command(three_jobs, capsys):
    out, _, _ = three_jobs
    assert main(["cache", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "jobs             3" in text and "frames           6" in text
    assert main(["cache", "prune", "--output", str(out), "--keep-last", "1"]) == 0
    text = capsys.readouterr().out
    removed = [line.removeprefix("removed: ") for line in text.splitlines() if line.startswith("removed: ")]
    assert "kept 1 job folder(s)" in text and len([p for p in removed if Path(p).parent == out]) == 2
    assert main(["cache", "prune", "--output", str(out)]) == 1  # nothing said about what to keep
    assert main(["cache", "prune", "--output", str(out), "--max-size", "lots"]) == 2
    assert "--max-size: 'lots' is not a size" in capsys.readouterr().err


@pytest.mark.parametrize("text, seconds", [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("2w", 14 * 86400)])
def test_ages(text, seconds):
    assert cache.parse_age(text) == seconds


def test_sizes():
    assert cache.parse_size("10G") == 10 << 30 and cache.parse_size("512MiB") == 512 << 20


def test_the_inbox_prunes_to_its_cache_budget(cat, tmp_path):
    import shutil

    import yaml

    from flows.deployments import animate_inbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(cat, inbox / "cat.png")
    for k in range(2):
        doc = {"source": {"image": "cat.png", "prompt": "a photo of a cat"}, "frames": {"prompts": PROMPTS[k:k + 2]},
               "model": {"model": "tiny"}, "settings": {"width": 64, "height": 64, "steps": 2, "start_step": 1},
               "output": {"folder": "out", "mp4": False}, "quality": {"metrics": False}}
        (inbox / f"job{k}.yaml").write_text(yaml.safe_dump(doc))
    report = animate_inbox(inbox=str(inbox), cache_budget="1")  # nothing fits: every finished job goes
    assert report.rendered == ["job0.yaml", "job1.yaml"] and report.pruned_bytes > 0
    assert cache.usage(inbox / "out").counts() == {"inversions": 0, "frames": 0, "jobs": 0, "sweeps": 0}
    assert animate_inbox(inbox=str(inbox)).rendered == ["job0.yaml", "job1.yaml"]  # pruned: rendered again
    kept = animate_inbox(inbox=str(inbox), cache_budget="1G")
    assert kept.skipped == ["job0.yaml", "job1.yaml"] and kept.pruned_bytes == 0
    state = animate_inbox(inbox=str(inbox), cache_budget="lots", return_state=True)
    assert state.is_failed() and "cache_budget: 'lots' is not a size" in state.message
