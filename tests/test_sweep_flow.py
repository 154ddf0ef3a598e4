"""The sweep flow (flows/sweep.py) on the tiny checkpoint: 2x2 grid over start_step x
start_layer, 64x64, 3 steps, frames 0 and 3 of a 4-frame job per cell."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import flows.execution.rendering as rendering
from flows import AnimationJob
from flows.cli import main
from flows.jobdir.frames_io import frame_path
from flows.job.plan import plan_job
from flows.sweeps.grid import SweepError, expand_cells, grid_image, parse_sweep
from flows.sweep import prepare_sweep, sweep

pytestmark = pytest.mark.usefixtures("prefect_harness")

STEPS = 3
PROMPTS = ["a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping", "a photo of a cat running"]
GRID = {"settings.start_step": [1, 2], "settings.start_layer": [8, 10]}
FRAMES = [0, 3]
CELLS = 4


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("src") / "cat.png"
    # Upside down: the inversion cache is keyed on image content and shared by the session; this
    # module counts a cold first inversion.
    Image.fromarray(data.chelsea()[::-1]).resize((64, 64)).save(path)
    return path


def job_data(image, out, sweep_section=None) -> dict:
    data = {
        "source": {"image": str(image), "prompt": "a photo of a cat"},
        "frames": {"prompts": PROMPTS},
        "settings": {"width": 64, "height": 64, "steps": STEPS, "start_step": 1},
        "output": {"folder": str(out), "fps": 5},
        "execution": {"chunk_size": 2, "batch_size": 2},
    }
    if sweep_section is not None:
        data["sweep"] = sweep_section
    return data


def make_job(image, out, sweep_section=None) -> AnimationJob:
    return AnimationJob.model_validate(job_data(image, out, sweep_section))


def png(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def first_sweep(cat_png, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    job = make_job(cat_png, out, {"grid": GRID, "frames": FRAMES})
    state = sweep(job, return_state=True)
    assert state.is_completed(), state.message
    return job, state.result()


def test_one_inversion_and_the_expected_frame_samples(first_sweep):
    job, result = first_sweep
    assert result.axes == GRID and result.frame_indices == FRAMES and len(result.cells) == CELLS
    assert result.unet_calls["inversion_calls"] == STEPS  # one inversion for four cells
    assert len(result.inversion_dirs) == 1 and result.inversions_computed == 1
    # inverted start: every frame runs all steps, one CFG pair (2 samples) per step
    assert result.unet_calls["frame_samples"] == CELLS * len(FRAMES) * 2 * STEPS
    assert result.frames_rendered == CELLS * len(FRAMES) and result.frames_skipped == 0
    # each cell's frames are in its own job folder, named by the hash a full run of that cell has
    for cell in result.cells:
        cell_job = AnimationJob.model_validate({**job.model_dump(mode="json"), "sweep": None,
                                                "settings": {**job.settings.model_dump(), **{
                                                    k.split(".")[1]: v for k, v in cell.values.items()}}})
        plan = plan_job(cell_job, write=False)
        assert cell.job_hash == plan.job_hash and cell.job_dir == plan.job_dir
        assert cell.frames == [str(frame_path(plan.job_dir, i)) for i in FRAMES]
        assert [frame_path(plan.job_dir, i).is_file() for i in range(4)] == [True, False, False, True]
        assert not (Path(plan.job_dir) / "result.json").exists()  # not a finished job
        assert Path(cell.gif).parent.parent == Path(result.sweep_dir)
        with Image.open(cell.gif) as gif:
            assert gif.n_frames == len(FRAMES) and gif.size == (64, 64)
        metrics = json.loads(Path(cell.metrics).read_text())
        assert [f["index"] for f in metrics["frames"]] == FRAMES and len(metrics["pairs"]) == 1
        assert metrics["summary"]["source_psnr_db"] > 0
    assert len({c.job_dir for c in result.cells}) == CELLS
    # the settings change the frames: no two cells drew the same last frame
    lasts = [png(c.frames[-1]) for c in result.cells]
    assert all(np.abs(lasts[a] - lasts[b]).max() > 0 for a in range(CELLS) for b in range(a))
    assert Path(result.sweep_dir) == Path(job.output.folder).absolute() / "sweeps" / result.sweep_hash[:16]


def test_grid_image_size_labels_and_cells(first_sweep):
    _, result = first_sweep
    picture = Image.open(result.grid).convert("RGB")
    cells = expand_cells(parse_sweep(GRID))
    frames = {c.index: [Image.open(p).convert("RGB") for p in result.cells[c.index].frames] for c in cells}
    layout = grid_image(cells, frames)
    assert picture.size == layout.image.size
    assert picture.width >= 2 * 2 * 64 and picture.height >= 2 * 64  # 2 columns of 2 frames, 2 rows
    arr = np.asarray(picture).astype(int)
    for left, top, right, bottom in layout.row_label_boxes + layout.column_label_boxes:
        assert (arr[top:bottom, left:right] != 255).any(), "a label area is blank"
    assert len(layout.row_label_boxes) == 2 and len(layout.column_label_boxes) == 2
    for cell in cells:
        left, top, right, bottom = layout.cell_boxes[cell.index]
        expected = np.concatenate([png(p) for p in result.cells[cell.index].frames], axis=1)
        assert np.array_equal(arr[top:bottom, left:right], expected)


def test_ranking_table_json_and_artifact(first_sweep):
    _, result = first_sweep
    ranking = json.loads(Path(result.ranking).read_text())
    assert [row["rank"] for row in ranking["table"]] == [1, 2, 3, 4]
    assert ranking["table"] == result.table
    best = result.cells[result.best_cell]
    assert best.rank == 1 and result.table[0]["set"] == best.set_line == result.best_set
    scores = [row["score"] for row in result.table]
    assert scores == sorted(scores) and all(0.0 <= v <= 1.0 for v in scores)
    # the score is the mean of the min-max normalised criteria: a cell best on warp error has 0 there
    warps = [row["warp_error"] for row in result.table]
    assert all(w is not None for w in warps) and result.table[0]["appearance_emd"] is not None
    assert f"--set settings.start_step={best.values['settings.start_step']}" in result.best_set
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = f"sweep-ranking-{result.sweep_hash[:16]}"
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]
    rows = json.loads(artifact.data)
    assert [r["set"] for r in rows] == [r["set"] for r in result.table]
    assert result.best_set in artifact.description
    # each cell's GIF is a link in the ranking the UI shows
    by_rank = {c.rank: c for c in result.cells}
    for row in rows:
        cell = by_rank[row["rank"]]
        assert row["GIF"] == f"[cell {cell.index} GIF]({Path(cell.gif).as_uri()})"
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"sweep-progress-{result.sweep_hash[:16]}"])))[0]
    total = CELLS * len(FRAMES)
    assert float(progress.data) == 100.0 and progress.description.endswith(f"100% ({total}/{total} frames), done")


def test_the_best_cell_is_a_complete_job_file(first_sweep, capsys):
    """best_job.yaml: the best cell's whole job, no sweep section; it validates and plans to the
    best cell's own job folder, so `run best_job.yaml` reuses the frames the sweep rendered."""
    _, result = first_sweep
    best = result.cells[result.best_cell]
    path = Path(result.best_job)
    assert path == Path(result.sweep_dir) / "best_job.yaml"
    text = path.read_text()
    assert text.startswith("# The best cell of sweep") and "masactrl-animate run best_job.yaml" in text
    data = yaml.safe_load(text)
    assert data["sweep"] is None
    for key, value in best.values.items():
        section, name = key.split(".")
        assert data[section][name] == value
    assert main(["validate", str(path)]) == 0
    assert f"-> {best.job_dir}" in capsys.readouterr().out
    from flows.job.files import load_job

    assert plan_job(load_job(path), write=False).job_hash == best.job_hash
    assert json.loads(Path(result.ranking).read_text())["best_job"] == str(path)


def test_rerun_renders_nothing(first_sweep):
    job, first = first_sweep
    mtimes = {p: Path(p).stat().st_mtime_ns for c in first.cells for p in c.frames}
    result = sweep(job, return_state=True).result()
    assert result.sweep_hash == first.sweep_hash
    assert result.frames_rendered == 0 and result.frames_skipped == CELLS * len(FRAMES)
    assert all(v == 0 for v in result.unet_calls.values()), result.unet_calls
    assert result.inversions_computed == 0
    assert {p: Path(p).stat().st_mtime_ns for c in result.cells for p in c.frames} == mtimes
    assert np.array_equal(png(result.grid), png(first.grid)) and result.best_set == first.best_set


def test_a_failed_cell_resumes_alone(first_sweep, tmp_path, monkeypatch):
    job, reference = first_sweep
    data = job.model_dump(mode="json")
    data["output"]["folder"] = str(tmp_path / "out")
    job = AnimationJob.model_validate(data)
    broken = prepare_sweep(job, write=False).plans[2].job_dir
    real = rendering.render_chunk_frames

    def crash_one_cell(chunk, *args, **kwargs):
        if chunk.job_dir == broken:
            raise RuntimeError("worker lost (injected by the test)")
        return real(chunk, *args, **kwargs)

    monkeypatch.setattr(rendering, "render_chunk_frames", crash_one_cell)
    state = sweep(job, return_state=True)
    assert state.is_failed()
    assert "1 of 4 sweep cell(s) failed" in state.message and "run the same sweep again" in state.message
    ranking = json.loads((tmp_path / "out" / "sweeps" / reference.sweep_hash[:16] / "ranking.json").read_text())
    assert [c["status"] for c in ranking["cells"]] == ["done", "done", "failed", "done"]
    assert ranking["table"][-1]["score"] is None  # the failed cell ranks last
    assert not any(frame_path(broken, i).exists() for i in FRAMES)

    monkeypatch.setattr(rendering, "render_chunk_frames", real)
    result = sweep(job, return_state=True).result()
    assert result.frames_rendered == len(FRAMES) and result.frames_skipped == (CELLS - 1) * len(FRAMES)
    assert result.unet_calls["frame_samples"] == len(FRAMES) * 2 * STEPS and result.unet_calls["inversion_calls"] == 0
    assert [c.status for c in result.cells] == ["done"] * CELLS
    for mine, theirs in zip(result.cells[2].frames, reference.cells[2].frames):
        assert np.abs(png(mine) - png(theirs)).max() <= 1


def test_cli_prints_the_ranking_grid_and_best_set_line(first_sweep, tmp_path, capsys):
    job, first = first_sweep
    data = job_data(job.source.image, job.output.folder, {"frames": FRAMES})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    code = main(["sweep", str(path), "--grid", "settings.start_step=1,2", "--grid", "settings.start_layer=8,10",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"best: masactrl-animate run {path} {first.best_set}" in out
    assert f"grid:           {first.grid}" in out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "settings.start_step", "settings.start_layer"]
    assert [line.split()[0] for line in lines[1:5]] == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_best_set_line_runs_the_best_cell_reusing_its_frames(first_sweep, tmp_path, capsys):
    """`run` with the printed --set options renders the best cell's job: the frames the sweep
    rendered are on disk already; the job's sweep section is ignored with a note."""
    job, first = first_sweep
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_data(job.source.image, job.output.folder, {"grid": GRID, "frames": FRAMES})))
    import shlex

    argv = ["run", str(path), *shlex.split(first.best_set), "--json", "--no-progress"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["job_dir"] == first.cells[first.best_cell].job_dir
    assert result["frames_rendered"] == 2 and result["frames_skipped"] == 2
    assert any("sweep section" in note for note in result["notes"])


@pytest.mark.parametrize("grid, field", [
    (["settings.start_stp=1,2"], "sweep settings.start_stp: settings has no field 'start_stp'"),
    (["settings.start_step=1,9"], "settings.start_step: 9 must be below settings.steps"),
    (["settings.start_layer=8,99"], "settings.start_layer"),
    (["settings.width=64,128"], "a grid needs one frame size"),
])
def test_cli_bad_grid_exits_2_naming_the_field(cat_png, tmp_path, capsys, grid, field):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_data(cat_png, tmp_path / "out")))
    argv = ["sweep", str(path), "--no-progress"]
    for g in grid:
        argv += ["--grid", g]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert field in err, err
    assert not (tmp_path / "out").exists()  # nothing written before the sweep is valid


def test_cli_bad_frames_and_no_grid(cat_png, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_data(cat_png, tmp_path / "out")))
    assert main(["sweep", str(path), "--grid", "settings.start_step=1,2", "--frames", "0,x"]) == 2
    assert "sweep.frames" in capsys.readouterr().err
    assert main(["sweep", str(path), "--grid", "settings.start_step=1,2", "--frames", "0,7"]) == 2
    assert "sweep.frames: 7 is not a frame of this job" in capsys.readouterr().err
    assert main(["sweep", str(path)]) == 2
    assert "no settings to sweep" in capsys.readouterr().err


def test_job_sweep_section_is_validated_and_not_hashed(cat_png, tmp_path):
    plain = make_job(cat_png, tmp_path)
    swept = make_job(cat_png, tmp_path, {"settings.start_step": [1, 2], "settings": {"start_layer": [8]},
                                         "frames": [0, 3]})
    assert swept.sweep.grid == {"settings.start_step": [1, 2], "settings.start_layer": [8]}
    assert swept.sweep.frames == [0, 3]
    assert plan_job(plain, write=False).job_hash == plan_job(swept, write=False).job_hash
    with pytest.raises(Exception, match="sweep settings.start_stp: settings has no field"):
        make_job(cat_png, tmp_path, {"settings.start_stp": [1]})
    with pytest.raises(Exception, match="sweep.frames: -1 is not a frame index"):
        make_job(cat_png, tmp_path, {"frames": [-1]})
    # the flow's grid parameter replaces the job's axis of the same key and adds the others
    sp = prepare_sweep(swept, {"settings.start_step": [2], "settings.guidance_scale": [5, 7]}, write=False)
    assert [(a.key, a.values) for a in sp.spec.axes] == [
        ("settings.start_step", [2]), ("settings.start_layer", [8]), ("settings.guidance_scale", [5.0, 7.0])]
    with pytest.raises(SweepError, match="sweep.frames: 4 is not a frame of this job"):
        prepare_sweep(swept, frames=[0, 4], write=False)


def test_a_cells_chunks_are_the_full_runs_chunks_of_its_sampled_frames(cat_png, tmp_path):
    """A sweep renders through the animate path's own chunking (JobPlan.chunks), restricted to the
    sampled frames: their own indices, the job's folder, engine and anchor, numbered on from a start."""
    job = make_job(cat_png, tmp_path)
    job = job.model_copy(update={"settings": job.settings.model_copy(
        update={"cross_frame": "anchor", "anchor_frame": 1})})
    plan = plan_job(job, write=False)
    (whole,) = plan.chunks(len(plan.frames), 2, "inv")
    sampled = plan.chunks(1, 2, "inv", indices=FRAMES, first_index=5)
    assert [c.index for c in sampled] == [5, 6]
    assert [[f.index for f in c.frames] for c in sampled] == [[i] for i in FRAMES]
    assert all(c.anchor == plan.frames[1] for c in sampled)  # the anchor need not be a sampled frame
    assert all(c.model_dump(exclude={"index", "frames"}) == whole.model_dump(exclude={"index", "frames"})
               for c in sampled)
    assert plan.chunks(2, 2, "inv") == plan.chunks(2, 2, "inv", indices=list(range(len(plan.frames))))


def test_sweep_deployment_has_a_form():
    from flows.deployments import build_deployments

    deployments = {d.name: d for d in build_deployments(cron=None)}
    assert {"animate", "sweep", "animate-inbox"} <= set(deployments)
    assert deployments["sweep"].entrypoint == "flows.sweep.sweep"
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(sweep).model_dump()  # what the deployment's run form is drawn from
    assert list(schema["properties"]) == ["job", "grid", "frames"] and schema["required"] == ["job"]
    assert "settings.start_step" in schema["properties"]["grid"]["description"]
    job_fields = schema["definitions"]["AnimationJob"]["properties"]
    assert "sweep" in job_fields and set(schema["definitions"]["SweepSection"]["properties"]) == {"grid", "frames"}
