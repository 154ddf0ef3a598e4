"""The model-family benchmark runs on the tiny checkpoints and reports exact sample counts."""

from benchmarks import families


def test_families_benchmark_quick(tmp_path, capsys):
    rows = {r["family"]: r for r in families.main(["--quick", "--cache-dir", str(tmp_path)])}
    assert rows["sd15"]["blocks"] == 16 and rows["sdxl"]["blocks"] == rows["sdxl-turbo"]["blocks"] == 70
    # Under CFG a frame costs 2T samples; Turbo without guidance costs T (here T=2 and T=1).
    assert rows["sd15"]["frame_samples_per_frame"] == rows["sdxl"]["frame_samples_per_frame"] == 4
    assert rows["sdxl-turbo"]["frame_samples_per_frame"] == 1
    assert "tiny-sdxl-turbo: 1 UNet samples per frame against 4 for SD 1.5 at T=2 (4.0x fewer)" in capsys.readouterr().out
