"""One throughput-curve lookup, keyed by (GPU model, workload): the planner's value curves, the
simulated plant and config validation all use the rows of the site's ``gpu.model`` only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from powerctl.config import ConfigError, load_config
from powerctl.control.planner import site_params
from powerctl.optimizer.curves import fit_concave_pwl
from powerctl.sim.plant.gpu_cluster import GpuCluster
from powerctl.throughput import CurveError, parse_table, throughput_curve

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.toml"
CSV = ROOT / "powerctl" / "data" / "gpu-cap-curves.csv"
CLASSES = """classes = [
  { name = "vision", gpus = 32, priority = 0, value_per_kwh = 2.00, curve = "resnet50" },
]
"""


def _site(tmp_path: Path, model: str, curve: str = "resnet50") -> Path:
    text = DEMO.read_text()
    start = text.index("classes = [")
    end = text.index("]\n", start) + 2
    text = text[:start] + CLASSES.replace('"resnet50"', f'"{curve}"') + text[end:]
    assert 'model = "A100"' in text, "demo config no longer names its GPU model"
    text = text.replace('model = "A100"', f'model = "{model}"', 1)
    text = text.replace("min_w = 200.0", "min_w = 100.0").replace("max_w = 700.0", "max_w = 300.0")
    text = text.replace("safe_cap_w = 300.0", "safe_cap_w = 150.0")
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def _rows(gpu: str, workload: str) -> tuple[np.ndarray, np.ndarray]:
    """(cap fraction, throughput) straight from the CSV, independent of powerctl.throughput."""
    with CSV.open(newline="") as f:
        pts = sorted(
            (float(r["cap_w"]), float(r["relative_throughput"]))
            for r in csv.DictReader(f)
            if r["gpu"] == gpu and r["workload"].split()[0] == workload
        )
    caps = np.array([c for c, _ in pts])
    return caps / caps.max(), np.array([t for _, t in pts])


def test_resnet50_on_an_a40_site_uses_only_a40_rows(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, "A40"))
    cls = site_params(cfg).gpu_classes[0]
    p_max_kw = 32 * 300.0 / 1000.0
    for gpu in ("A40", "V100"):
        frac, tput = _rows(gpu, "resnet50")
        bp, val = fit_concave_pwl(frac * p_max_kw, tput * p_max_kw * 2.0, max_segments=3)
        same = bp.shape == np.shape(cls.value_breakpoints_kw) and np.allclose(bp, cls.value_breakpoints_kw) \
            and np.allclose(val, cls.value_per_h)
        assert same == (gpu == "A40"), f"planner's resnet50 curve {'differs from' if gpu == 'A40' else 'equals'} the {gpu} rows"

    # the simulated plant reads the same rows: at 200 W of 300 W an A40 does what the A40 rows say
    plant = GpuCluster(cfg.gpu)
    frac, tput = _rows("A40", "resnet50")
    np.testing.assert_allclose(plant.curves[0](frac), np.maximum.accumulate(tput))


@pytest.mark.parametrize(
    ("model", "curve", "expected"),
    [
        ("H100", "resnet50", "no measured curves for GPU model 'H100'"),
        ("A40", "infer_llama_8b", "no curve 'infer_llama_8b' for GPU model 'A40'"),
        ("A100", "resnet5", "no curve 'resnet5' for GPU model 'A100'"),
    ],
)
def test_unknown_gpu_model_or_curve_is_a_config_error(tmp_path: Path, model: str, curve: str, expected: str) -> None:
    path = _site(tmp_path, model, curve)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"{path}: gpu:" in msg and "classes[0].curve" in msg and expected in msg
    assert "Traceback" not in msg


def test_linear_needs_no_row_and_any_model(tmp_path: Path) -> None:
    cfg = load_config(_site(tmp_path, "H100", "linear"))
    frac, tput = throughput_curve(cfg.gpu.model, "linear")
    np.testing.assert_allclose(tput, frac)


def test_bad_table_rows_say_which() -> None:
    with pytest.raises(CurveError, match=r"t.csv row 3: cap_w/relative_throughput must be numbers"):
        parse_table([{"gpu": "A", "workload": "w", "cap_w": "1", "relative_throughput": "1"},
                     {"gpu": "A", "workload": "w", "cap_w": "n/a", "relative_throughput": "1"}], "t.csv")
    with pytest.raises(CurveError, match="missing columns cap_w"):
        parse_table([{"gpu": "A", "workload": "w", "relative_throughput": "1"}], "t.csv")
