"""The output folder's layout has one owner, ``flows.jobdir.layout``.

The names are pinned literally: a renamed file breaks every job folder already on disk (resumed
runs render again, the inbox runs finished jobs again), so a rename must be deliberate here too.
And no other module under flows/ spells them: it asks the layout.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from flows.jobdir import frames_io, layout, manifest
from flows.jobdir.layout import HASH_CHARS, InversionFolder, JobFolder, SweepFolder, folder_name

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"
HASH = "0123456789abcdef" + "fedcba9876543210" * 3


def test_job_folder_names_are_those_old_runs_wrote(tmp_path):
    f = JobFolder(tmp_path)
    names = {
        f.job_file: "job.json",
        f.frame(3): "frames/frame_0003.png",
        f.frame(12345): "frames/frame_12345.png",
        f.frame_digest(3): "frames/frame_0003.sha256",
        f.pose(7): "poses/pose_0007.png",
        f.pose_keypoints(7): "poses/pose_0007.json",
        f.poses_index: "poses/index.json",
        f.gif: "animation.gif",
        f.mp4: "animation.mp4",
        f.contact_sheet: "contact_sheet.png",
        f.side_by_side(".png"): "side_by_side.png",
        f.side_by_side(".gif"): "side_by_side.gif",
        f.side_by_side(".mp4"): "side_by_side.mp4",
        f.metrics: "metrics.json",
        f.result: "result.json",
        f.running: "running.json",
        f.source_mask: "masks/source.png",
        f.frame_mask(2): "masks/frame_0002.png",
        f.source_decode: "source_decode.png",
    }
    assert {p.relative_to(tmp_path).as_posix(): want for p, want in names.items()} == \
        {want: want for want in names.values()}
    assert f.frames_dir == tmp_path / "frames" and f.poses_dir == tmp_path / "poses"
    assert f.masks_dir == tmp_path / "masks"
    assert f.temp_folders == (tmp_path, tmp_path / "frames", tmp_path / "poses", tmp_path / "inbetweens")
    assert isinstance(JobFolder(str(tmp_path)).path, Path) and Path(JobFolder(tmp_path)) == tmp_path


def test_hash_folders_use_the_first_16_hex_digits(tmp_path):
    assert HASH_CHARS == 16 and folder_name(HASH) == "0123456789abcdef"
    assert JobFolder.of(tmp_path, HASH).path == tmp_path / "0123456789abcdef"
    assert InversionFolder.of(tmp_path, HASH).path == tmp_path / "inversions" / "0123456789abcdef"
    assert SweepFolder.of(tmp_path, HASH).path == tmp_path / "sweeps" / "0123456789abcdef"


def test_inversion_and_sweep_folder_names(tmp_path):
    inv = InversionFolder(tmp_path)
    assert (inv.source, inv.source_decode) == (tmp_path / "source.png", tmp_path / "source_decode.png")
    assert (inv.tensors, inv.meta) == (tmp_path / "inversion.safetensors", tmp_path / "inversion.json")
    sweep = SweepFolder(tmp_path)
    assert sweep.cell_gif(3) == tmp_path / "cells" / "cell_03.gif"
    assert sweep.cell_metrics(3) == tmp_path / "cells" / "cell_03.metrics.json"
    assert (sweep.grid, sweep.ranking, sweep.sweep_file) == \
        (tmp_path / "grid.png", tmp_path / "ranking.json", tmp_path / "sweep.json")


def test_frames_on_disk_by_index(tmp_path):
    f = JobFolder(tmp_path)
    assert f.frames_on_disk() == []
    f.frames_dir.mkdir()
    for name in ("frame_0010.png", "frame_0002.png", "frame_0002.sha256", "frame_x.png",
                 ".frame_0003.ab12cd34ef.tmp.png"):
        (f.frames_dir / name).touch()
    assert f.frames_on_disk() == [(2, f.frame(2)), (10, f.frame(10))]
    assert layout.frame_index("frame_0007.png") == 7 and layout.frame_index("pose_0007.png") is None


def test_temp_and_lock_names(tmp_path):
    tmp = layout.temp_path(tmp_path / "animation.mp4", "3f9c2a1b07de")
    assert tmp == tmp_path / ".animation.3f9c2a1b07de.tmp.mp4"
    assert layout.TEMP_NAME.match(tmp.name).group("stem") == "animation"
    assert layout.lock_path(tmp_path / "0123456789abcdef") == tmp_path / ".0123456789abcdef.lock"


def test_the_old_helpers_give_the_layout_paths(tmp_path):
    f = JobFolder(tmp_path)
    assert frames_io.frame_path(tmp_path, 5) == f.frame(5) and frames_io.pose_path(tmp_path, 5) == f.pose(5)
    assert manifest.digest_path(f.frame(5)) == f.frame_digest(5)
    written = frames_io.write_poses(tmp_path, [], ["{}"])
    assert written == [] and f.pose_keypoints(0).read_text() == "{}" and f.poses_index.is_file()
    with frames_io.folder_lock(tmp_path / "job"):
        assert layout.lock_path(tmp_path / "job").is_file()


# --- nobody else spells the layout ----------------------------------------------------------------

# A string constant (or an f-string's literal part) that is one of these spells a layout name.
# ("frames", "poses", "cells", "animation", "side_by_side" are also result fields and dict keys.)
FILE_NAMES = {
    "job.json", "result.json", "metrics.json", "running.json", "index.json", "source.png", "source_decode.png",
    "contact_sheet.png", "side_by_side.png", "side_by_side.gif", "side_by_side.mp4", "animation.gif",
    "animation.mp4", "grid.png", "ranking.json", "sweep.json", "inversions", "sweeps", "masks", ".sha256",
    ".lock", "frame_", "pose_", "cell_", ".metrics.json", "frame_*.png", ".tmp",
}
# In the code (not comments, not docstrings): the hash prefix spelled by hand.
PATTERNS = [re.compile(r"\[:\s*(16|HASH_CHARS)\s*\]")]
OWNER = FLOWS / "jobdir" / "layout.py"


def _docstrings(tree: ast.AST) -> list[ast.Constant]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.append(first.value)
    return found


def _code_only(text: str, docstrings: list[ast.Constant]) -> str:
    """``text`` with comments and docstrings blanked (they may name files for people)."""
    lines = text.splitlines(keepends=True)
    blank = [(tok.start, tok.end) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    blank += [((d.lineno, d.col_offset), (d.end_lineno, d.end_col_offset)) for d in docstrings]
    for (row, col), (end_row, end_col) in blank:
        for r in range(row, end_row + 1):
            line = lines[r - 1]
            a = col if r == row else 0
            b = end_col if r == end_row else len(line.rstrip("\n"))
            lines[r - 1] = line[:a] + " " * (b - a) + line[b:]
    return "".join(lines)


def _layout_spellings(path: Path, root: Path = ROOT) -> list[str]:
    text = path.read_text()
    tree = ast.parse(text)
    docs = _docstrings(tree)
    doc_ids = {id(d) for d in docs}
    where = path.relative_to(root)
    found = [f"{where}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in doc_ids
             and node.value in FILE_NAMES]
    code = _code_only(text, docs)
    for pattern in PATTERNS:
        for match in pattern.finditer(code):
            found.append(f"{where}:{code.count(chr(10), 0, match.start()) + 1}: {match.group()}")
    return found


def _flows_modules() -> list[Path]:
    return [p for p in sorted(FLOWS.rglob("*.py"))
            if p != OWNER]


def test_no_module_but_the_layout_spells_a_layout_name():
    found = [hit for path in _flows_modules() for hit in _layout_spellings(path)]
    assert not found, "ask flows.jobdir.layout instead:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet", [
    'p = job_dir / "result.json"\n',
    'name = f"frame_{i:04d}.png"\n',
    'key = digest[:16]\n',
    'folder = out / "inversions" / key\n',
])
def test_the_check_finds_a_spelled_name(tmp_path, snippet):
    module = tmp_path / "flows_module.py"
    module.write_text('"""Docstrings may say result.json and [:16]."""\n' + snippet + "# so may comments: [:16]\n")
    found = _layout_spellings(module, tmp_path)
    assert found and all(hit.startswith("flows_module.py:2: ") for hit in found), found
