"""The Prefect-free parts of sweeps (flows/sweeps/grid.py): parsing, cells, frame choice, grid image, ranking."""

import numpy as np
import pytest
from PIL import Image

from flows.sweeps import grid as sweep
from flows.job.files import apply_overrides, parse_override
from flows.quality.report import MetricsSummary
from flows.sweeps.grid import SweepError


# ------------------------------------------------------------------ parsing


def test_grid_strings_are_typed_by_the_job_model():
    spec = sweep.parse_sweep(None, ["settings.start_step=2,4,8", "settings.controlnet_scale=[0.8, 1.2]",
                                    "settings.source_correction=true,false", "settings.negative_prompt=blurry,dark"])
    values = {a.key: a.values for a in spec.axes}
    assert values == {
        "settings.start_step": [2, 4, 8],
        "settings.controlnet_scale": [0.8, 1.2],
        "settings.source_correction": [True, False],
        "settings.negative_prompt": ["blurry", "dark"],
    }
    assert type(values["settings.controlnet_scale"][0]) is float
    assert spec.cell_count == 3 * 2 * 2 * 2 and spec.frames is None


def test_sweep_mapping_nested_or_dotted_with_frames_and_grid_override():
    spec = sweep.parse_sweep({"settings": {"start_step": [2, 4]}, "settings.start_layer": ["8", 10],
                              "frames": [0, 5, 5]}, grid=["settings.start_step=1,3"])
    assert [(a.key, a.values) for a in spec.axes] == [("settings.start_step", [1, 3]), ("settings.start_layer", [8, 10])]
    assert spec.frames == [0, 5]


@pytest.mark.parametrize("grid, message", [
    (["settings.start_step=a"], "sweep settings.start_step: 'a' is not a valid value"),
    (["settings.start_layer=4,-1"], "sweep settings.start_layer: -1 is not a valid value (Input should be greater"),
    (["settings.start_stp=1"], "settings has no field 'start_stp'; its fields are width, height"),
    (["settings=1"], "sweep settings: is a section; sweep one of its fields: settings.width"),
    (["settings.start_step.x=1"], "settings.start_step is a value, not a section"),
    (["output.fps=8,12"], "sweep output.fps: output does not change the frames"),
    (["settings.start_step=2,2"], "the value 2 is listed twice"),
    (["settings.start_step=2,,4"], "--grid settings.start_step: empty value"),
    (["start_step"], "expected key=value1,value2"),
    (["settings.start_step=1", "settings.start_step=2"], "given twice"),
])
def test_grid_errors_name_the_field_and_the_fix(grid, message):
    with pytest.raises(SweepError, match=None) as info:
        sweep.parse_sweep(None, grid)
    assert message in str(info.value)


def test_sweep_mapping_errors():
    with pytest.raises(SweepError, match="no settings to sweep"):
        sweep.parse_sweep({"frames": [0]})
    with pytest.raises(SweepError, match="sweep.frames: -1 is not a frame index"):
        sweep.parse_sweep({"settings.start_step": [2], "frames": [-1]})
    with pytest.raises(SweepError, match="sweep settings.start_step: no values"):
        sweep.parse_sweep({"settings.start_step": []})
    with pytest.raises(SweepError, match="more than 256"):
        sweep.parse_sweep({"settings.start_step": list(range(0, 20)), "settings.start_layer": list(range(0, 15))})


# ------------------------------------------------------------------ cells


def test_cells_are_the_product_first_axis_slowest():
    spec = sweep.parse_sweep(None, ["settings.start_step=2,4", "settings.start_layer=8,10,12",
                                    "settings.controlnet_scale=0.8,1.2"])
    cells = sweep.expand_cells(spec)
    assert len(cells) == 12 and [c.index for c in cells] == list(range(12))
    assert cells[0].values == {"settings.start_step": 2, "settings.start_layer": 8, "settings.controlnet_scale": 0.8}
    assert cells[1].values["settings.controlnet_scale"] == 1.2
    # rows: start_step; columns: start_layer x controlnet_scale flattened
    assert [(c.row, c.column) for c in cells[:7]] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0)]
    one_axis = sweep.expand_cells(sweep.parse_sweep(None, ["settings.start_step=1,2,3"]))
    assert [(c.row, c.column) for c in one_axis] == [(0, 0), (0, 1), (0, 2)]


def test_overrides_read_back_as_the_same_values():
    spec = sweep.parse_sweep({"settings.negative_prompt": ["true", "a: b", "plain words", ""],
                              "settings.controlnet_scale": [0.8]})
    for cell in sweep.expand_cells(spec):
        for text, (key, value) in zip(cell.overrides, cell.values.items()):
            parts, parsed = parse_override(text)
            assert ".".join(parts) == key and parsed == value


def test_set_line_is_shell_quoted_and_applies():
    spec = sweep.parse_sweep({"settings.negative_prompt": ["blurry, dark"], "settings.start_step": [3]})
    cell = sweep.expand_cells(spec)[0]
    assert cell.set_line == "--set 'settings.negative_prompt=blurry, dark' --set settings.start_step=3"
    data = apply_overrides({"settings": {}}, cell.overrides)
    assert data["settings"] == {"negative_prompt": "blurry, dark", "start_step": 3}


def test_apply_cell_validates_the_whole_job(tmp_path):
    from flows.job.model import AnimationJob

    Image.new("RGB", (64, 64), (120, 80, 40)).save(tmp_path / "cat.png")
    job = AnimationJob(source={"image": str(tmp_path / "cat.png"), "prompt": "a cat"},
                       frames={"prompts": ["a cat"]}, settings={"steps": 10})
    cells = sweep.expand_cells(sweep.parse_sweep(None, ["settings.start_step=4,12"]))
    assert sweep.apply_cell(job, cells[0]).settings.start_step == 4
    assert job.settings.start_step != 12  # the job itself is unchanged
    with pytest.raises(SweepError, match=r"sweep cell settings.start_step=12: .*settings.start_step"):
        sweep.apply_cell(job, cells[1])


def test_frames_per_cell():
    assert sweep.select_frames(10) == [0, 3, 6, 9]
    assert sweep.select_frames(3) == [0, 1, 2]
    assert sweep.select_frames(1) == [0]
    assert sweep.select_frames(9, max_frames=3) == [0, 4, 8]  # first, middle, last
    assert sweep.select_frames(10, [7, 2, 7]) == [7, 2]
    with pytest.raises(SweepError, match=r"sweep.frames: 10 is not a frame of this job \(it has frames 0-9\)"):
        sweep.select_frames(10, [10])


# ------------------------------------------------------------------ grid image


def solid_frames(cell_index, n=2, size=(24, 16)):
    rng = np.random.default_rng(cell_index)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_grid_image_layout_labels_and_cells():
    spec = sweep.parse_sweep(None, ["settings.start_step=2,4", "settings.start_layer=8,10,12"])
    cells = sweep.expand_cells(spec)
    frames = {c.index: solid_frames(c.index) for c in cells}
    g = sweep.grid_image(cells, frames, gap=6)
    top = g.cell_boxes[0][1]
    cw, ch = 2 * 24, 16  # two frames side by side
    # Columns are as wide as their labels here (wider than the cells); rows as tall as the cells.
    assert g.image.size == (g.column_label_boxes[-1][2] + 6, top + 2 * (ch + 6))
    arr = np.asarray(g.image)
    for c in cells:
        x0, y0, x1, y1 = g.cell_boxes[c.index]
        assert (x1 - x0, y1 - y0) == (cw, ch)
        label = g.column_label_boxes[c.column]
        assert label[0] <= x0 and x1 <= label[2]  # the cell sits under its column's label
        assert y0 == top + c.row * (ch + 6)
        expected = np.concatenate([np.asarray(f) for f in frames[c.index]], axis=1)
        assert np.array_equal(arr[y0:y1, x0:x1], expected)
    assert len(g.row_label_boxes) == 2 and len(g.column_label_boxes) == 3
    for x0, y0, x1, y1 in g.row_label_boxes + g.column_label_boxes:
        region = arr[y0:y1, x0:x1]
        assert (region < 128).any()  # dark text on the white background
    # The row labels differ from each other (the values are written, not just the key).
    r0, r1 = (arr[b[1]:b[3], b[0]:b[2]] for b in g.row_label_boxes)
    assert not np.array_equal(r0, r1)


def test_grid_with_one_axis_and_a_missing_cell():
    cells = sweep.expand_cells(sweep.parse_sweep(None, ["settings.start_step=1,2,3"]))
    frames = {0: solid_frames(0, n=1), 2: solid_frames(2, n=1)}
    g = sweep.grid_image(cells, frames)
    assert g.row_label_boxes == [] and len(g.column_label_boxes) == 3
    x0, y0, x1, y1 = g.cell_boxes[1]
    missing = np.asarray(g.image)[y0:y1, x0:x1]
    assert (missing == 128).mean() > 0.5  # grey box, with the word "missing" on it
    with pytest.raises(SweepError, match="differ in size"):
        sweep.cell_strip([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))])


# ------------------------------------------------------------------ ranking


def summary(warp, emd, pck=None):
    return MetricsSummary(frames=3, warp_error=warp, appearance_emd=emd, pose_pck=pck)


def test_ranking_order_score_and_best_set_line():
    cells = sweep.expand_cells(sweep.parse_sweep(None, ["settings.start_step=1,2", "settings.start_layer=8,10"]))
    metrics = {
        0: summary(4.0, 2.0, 0.5),  # worst warp, best colour, worst pose: (1 + 0 + 1) / 3
        1: summary(2.0, 4.0, 1.0),  # warp 1/3 of the way to the worst, worst colour, best pose: (1/3 + 1 + 0) / 3
        2: summary(1.0, 2.0, 1.0),  # best everywhere: 0
        3: None,                    # failed: last
    }
    ranked = sweep.rank_cells(cells, metrics)
    assert [r.cell.index for r in ranked] == [2, 1, 0, 3]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert ranked[0].score == 0.0 and ranked[1].score == pytest.approx(4 / 9)
    assert ranked[2].score == pytest.approx(2 / 3) and ranked[3].score is None
    assert ranked[0].used == ["warp_error", "appearance_emd", "pose_pck"]
    assert sweep.best_set_line(ranked) == "--set settings.start_step=2 --set settings.start_layer=8"
    table = sweep.ranking_table(ranked)
    assert table[0] == {"rank": 1, "settings.start_step": "2", "settings.start_layer": "8", "score": 0.0,
                        "warp_error": 1.0, "appearance_emd": 2.0, "pose_pck": 1.0,
                        "set": "--set settings.start_step=2 --set settings.start_layer=8"}


def test_ranking_skips_a_criterion_some_cells_lack():
    cells = sweep.expand_cells(sweep.parse_sweep(None, ["settings.start_step=1,2"]))
    ranked = sweep.rank_cells(cells, {0: summary(1.0, 5.0, None), 1: summary(2.0, 1.0, 0.9)})
    assert ranked[0].used == ["warp_error", "appearance_emd"]
    assert [r.score for r in ranked] == [0.5, 0.5] and ranked[0].cell.index == 0  # tie -> lower warp error
    with pytest.raises(SweepError, match="no cell has metrics"):
        sweep.best_set_line(sweep.rank_cells(cells, {}))
