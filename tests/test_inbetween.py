"""flows.jobdir.inbetween: in-between frames by optical-flow warping, against known answers.

The known answers are views of real photos (scikit-image's astronaut and cat) moved by a known
motion: the true middle view is rendered from the photo itself, so the in-between made from the
two outer views can be scored against it. Measured here (128 px views): the in-between beats the
plain cross-fade by 9-26 dB and reaches 25-45 dB PSNR against the truth (benchmarks/RESULTS.md); the
asserted margins are looser than that, so a different OpenCV build does not fail them.
"""

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from flows.jobdir import inbetween
from flows.jobdir.layout import JobFolder

SIZE = 128
# Asserted bounds (dB): the in-between must beat the cross-fade by MARGIN and reach FLOOR vs the truth.
MARGIN_DB = 6.0
FLOOR_DB = {"pan": 26.0, "zoom": 22.0}


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _photo(name):
    img = getattr(data, name)()
    return cv2.resize(img, (256, round(256 * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_AREA)


def view(photo, dx=0.0, zoom=1.0):
    """A SIZE x SIZE view of ``photo``'s centre, moved right by ``dx`` and magnified by ``zoom``."""
    h, w = photo.shape[:2]
    cx, cy = w / 2 + dx, h / 2
    m = np.array([[zoom, 0, SIZE / 2 - zoom * cx], [0, zoom, SIZE / 2 - zoom * cy]], np.float32)
    return cv2.warpAffine(photo, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR)


def known_answer(photo, motion):
    """(first, true middle, last) for a pan of 12 px or a zoom from 1.0 to 1.2 (the middle at 1.1:
    points move on straight lines at constant speed, which is what the in-between assumes)."""
    if motion == "pan":
        return view(photo, dx=-6), view(photo), view(photo, dx=6)
    return view(photo, zoom=1.0), view(photo, zoom=1.1), view(photo, zoom=1.2)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
@pytest.mark.parametrize("motion", ["pan", "zoom"])
def test_middle_frame_beats_a_crossfade_and_is_near_the_truth(name, motion):
    first, truth, last = known_answer(_photo(name), motion)
    middle = inbetween.interpolate(first, last, 0.5)
    faded = inbetween.crossfade(first, last, 0.5)
    ours, fade = psnr(middle, truth), psnr(faded, truth)
    assert ours >= FLOOR_DB[motion], (ours, fade)
    assert ours - fade >= MARGIN_DB, (ours, fade)


def test_a_quarter_of_the_way_follows_the_motion():
    first, _, last = known_answer(_photo("astronaut"), "pan")
    quarter = inbetween.interpolate(first, last, 0.25)
    truth = view(_photo("astronaut"), dx=-3)
    wrong = view(_photo("astronaut"), dx=3)  # three quarters of the way: what a mixed-up t would give
    assert psnr(quarter, truth) > psnr(quarter, wrong) + 6


def test_identical_frames_give_identical_inbetweens():
    frame = view(_photo("chelsea"))
    for t in (0.25, 0.5, 0.75):
        assert np.array_equal(inbetween.interpolate(frame, frame, t), frame)


def test_deterministic_and_symmetric():
    first, _, last = known_answer(_photo("chelsea"), "zoom")
    a = inbetween.interpolate(first, last, 0.5)
    assert np.array_equal(a, inbetween.interpolate(first, last, 0.5))
    # From the other end at the same moment: the same picture up to rounding and flow noise.
    assert psnr(a, inbetween.interpolate(last, first, 0.5)) > 35


def test_an_object_moving_over_a_background_is_not_ghosted():
    """The cat's face slides over the astronaut: where it uncovers or covers the background the
    in-between must show one or the other (occlusion-aware), not a cross-fade of both."""
    background = cv2.resize(data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    patch = cv2.resize(data.chelsea()[50:250, 100:300], (40, 40), interpolation=cv2.INTER_AREA)

    def scene(x):
        img = background.copy()
        img[44:84, x:x + 40] = patch
        return img

    first, truth, last = scene(36), scene(40), scene(44)
    region = (slice(44, 84), slice(36, 84))  # everything the face touches on its way
    middle = inbetween.interpolate(first, last, 0.5)
    faded = inbetween.crossfade(first, last, 0.5)
    ours, fade = psnr(middle[region], truth[region]), psnr(faded[region], truth[region])
    assert ours - fade >= MARGIN_DB, (ours, fade)


def test_bad_input_is_refused():
    frame = view(_photo("chelsea"))
    with pytest.raises(ValueError, match="t: 1.0"):
        inbetween.interpolate(frame, frame, 1.0)
    with pytest.raises(ValueError, match="differ in size"):
        inbetween.interpolate(frame, frame[:64], 0.5)
    with pytest.raises(ValueError, match="interpolate: 0"):
        inbetween.steps(0)
    assert inbetween.steps(1) == [] and inbetween.steps(4) == [0.25, 0.5, 0.75]


def _png(image):
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_inbetweens_on_disk_are_made_once_and_again_when_missing_or_stale(tmp_path):
    first, _, last = known_answer(_photo("astronaut"), "pan")
    data_ = {0: _png(first), 1: _png(last)}
    made = inbetween.ensure_inbetweens(tmp_path, [(0, 1)], 3, data_)
    paths = made[(0, 1)]
    folder = JobFolder(tmp_path)
    assert paths == [folder.inbetween(0, 1, 1, 3), folder.inbetween(0, 1, 2, 3)]
    assert all(p.parent == folder.inbetweens_dir for p in paths) and not folder.frames_dir.exists()
    stamp = paths[0].stat().st_mtime_ns
    again = inbetween.ensure_inbetweens(tmp_path, [(0, 1), (1, 0)], 3, data_)
    assert paths[0].stat().st_mtime_ns == stamp  # reused, not made again
    assert again[(1, 0)] == paths[::-1]  # the way back reuses the way forward
    want = inbetween.interpolate(first, last, 2 / 3)
    assert np.array_equal(np.asarray(Image.open(paths[1]).convert("RGB")), want)
    paths[1].unlink()
    inbetween.ensure_inbetweens(tmp_path, [(0, 1)], 3, data_)
    assert paths[1].is_file()  # missing: made again
    data_[1] = _png(first)  # frame 1 rendered anew, now identical to frame 0
    inbetween.ensure_inbetweens(tmp_path, [(0, 1)], 3, data_)
    assert np.array_equal(np.asarray(Image.open(paths[0]).convert("RGB")), first)  # stale: made again
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_the_benchmark_runs_in_its_ci_size_and_prints_its_rows(tmp_path, capsys):
    """benchmarks/inbetween.py end to end at 128² with the tiny UNet; timings are never asserted."""
    import re
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # `benchmarks` lives at the root, not installed
        sys.path.insert(0, str(root))
    from benchmarks import inbetween as bench

    result = bench.main(["--quick", "--threads", "1", "--cache-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for name in ("in-between (k=2)", "in-between (k=4)", "unet sample", "unet cfg pair", "rendered frame (T=50)"):
        match = re.search(rf"^{re.escape(name)}\s+(\d+\.\d+)$", out, re.MULTILINE)
        assert match and float(match.group(1)) == round(result["seconds"][name], 4), out
    assert len(result["quality"]) == 6
    assert all(q["inbetween_db"] - q["crossfade_db"] >= MARGIN_DB for q in result["quality"]), result["quality"]
    assert "a rendered frame = T CFG pairs = 100 UNet samples" in out
