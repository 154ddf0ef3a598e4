"""benchmarks/metrics.py runs end to end in its CI size and prints its rows; timings are never asserted."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is not an installed package; it lives at the root
    sys.path.insert(0, str(ROOT))

ROWS = ("flicker per pair", "appearance per frame", "appearance+ssim per frame", "psnr per job",
        "job metrics per job", "job metrics per frame", "unet sample", "unet cfg pair")


def test_metrics_benchmark_quick_prints_every_row(tmp_path, capsys):
    from benchmarks import metrics

    result = metrics.main(["--quick", "--threads", "1", "--cache-dir", str(tmp_path), "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    for name in ROWS:
        match = re.search(rf"^{re.escape(name)}\s+(\d+\.\d+)$", out, re.MULTILINE)
        assert match, f"row {name!r} missing from:\n{out}"
        assert float(match.group(1)) == round(result["seconds"][name], 4)
    assert re.search(r"^ratio metrics per frame / unet sample: \d+\.\d+x$", out, re.MULTILINE)
    assert re.search(r"^ratio metrics per frame / frame render \(T=50\): \d+\.\d+x$", out, re.MULTILINE)
    assert result["frames"] == 4 and result["size"] == 128 and result["unet"] == "tiny"
    assert (tmp_path / "out.json").is_file()
