"""The plot tool: discovery, labels, cumulative columns, the PNG grid and CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from fedsim.errors import ConfigError
from fedsim.plot import grid, load_runs, main, plot_runs, split_common

ROOT = Path(__file__).resolve().parents[1]
HEADER = (
    "round,wall_s,clients,loss,grad_norm_sq,gap,dist_sq,accuracy,"
    "up_bits,down_bits,up_floats,down_floats,grad_evals,failures"
)


def write_run(
    d: Path,
    rows: list[str],
    method: str = "tamuna",
    sampler: str = "uniform",
    overrides: list[str] | None = None,
) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    cfg = {"method": {"name": method}, "sampler": {"name": sampler}, "task": {"name": "quad"}}
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "seed": 0}))
    if overrides is not None:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return d


# grad_norm_sq and accuracy empty everywhere; gap missing in one row; down_bits partly empty
ROWS_A = [
    "1,0.1,4,2.0,,1.0,4.0,,800,1600,100,200,10,0",
    "2,0.2,4,1.5,,0.5,2.0,,800,,100,200,10,0",
    "3,0.3,4,1.2,,,1.0,,800,1600,100,200,12,0",
    "5,0.5,4,1.1,,0.1,0.5,,1600,3200,200,400,20,0",
]
ROWS_B = [
    "1,0.1,2,2.0,,2.0,5.0,,80,160,10,20,,0",
    "2,0.2,2,1.9,,1.0,3.0,,80,160,10,20,,0",
    "3,0.3,2,1.8,,0.4,2.0,,80,160,10,20,,0",
]


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = write_run(tmp_path / "a", ROWS_A, method="tamuna", sampler="cyclic")
    b = write_run(tmp_path / "b", ROWS_B, method="fedavg", sampler="uniform")
    return a, b


def test_cumulative_columns_and_labels(two_runs):
    a, b = two_runs
    ra, rb = load_runs([a, b])
    assert (ra.label, rb.label) == ("tamuna/cyclic", "fedavg/uniform")
    np.testing.assert_allclose(ra.data["bits"], np.cumsum([2400, 800, 2400, 4800]))
    np.testing.assert_allclose(ra.data["evals"], [10, 20, 32, 52])
    np.testing.assert_allclose(rb.data["bits"], [240, 480, 720])
    assert np.isnan(rb.data["evals"]).all()  # grad_evals not provided: not zero
    assert np.isnan(ra.data["gap"][2]) and ra.data["gap"][3] == 0.1
    np.testing.assert_array_equal(ra.data["round"], [1, 2, 3, 5])


def test_empty_columns_are_skipped(two_runs):
    runs = load_runs(two_runs)
    assert not any(r.has("grad_norm_sq") or r.has("accuracy") for r in runs)
    assert grid(runs) == (["gap", "dist_sq"], ["round", "bits", "evals"])
    assert grid(runs[1:]) == (["gap", "dist_sq"], ["round", "bits"])


def test_loss_is_the_fallback_row(tmp_path):
    d = write_run(tmp_path / "r", ["1,0.1,2,2.0,,,,0.5,,,,,,0", "2,0.2,2,1.0,,,,0.7,,,,,,0"])
    assert grid(load_runs([d])) == (["loss"], ["round"])
    assert plot_runs([d]).is_file()


def test_png_is_written(two_runs, tmp_path):
    out = plot_runs(list(two_runs), tmp_path / "figs" / "curves.png")
    assert out == tmp_path / "figs" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 1000  # a 2 x 3 grid


def test_default_out_is_in_first_dir(two_runs):
    assert plot_runs(list(two_runs)) == two_runs[0] / "curves.png"
    assert (two_runs[0] / "curves.png").stat().st_size > 0


def test_multirun_directory(tmp_path):
    sweep = tmp_path / "multirun"
    for i in (0, 1, 2, 10):
        write_run(sweep / str(i), ROWS_B, overrides=["sampler=cyclic", f"seed={i}"])
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    runs = load_runs([sweep])
    assert [r.directory.name for r in runs] == ["0", "1", "2", "10"]
    assert runs[3].label == "sampler=cyclic seed=10"
    common, short = split_common([r.label for r in runs])
    assert common == ["sampler=cyclic"] and short == ["seed=0", "seed=1", "seed=2", "seed=10"]
    assert main([str(sweep)]) == 0
    assert (sweep / "curves.png").is_file()


def test_label_by_and_duplicate_labels(two_runs, tmp_path):
    runs = load_runs(two_runs, label_by=["sampler.name", "seed"])
    assert [r.label for r in runs] == ["sampler.name=cyclic seed=0", "sampler.name=uniform seed=0"]
    c = write_run(tmp_path / "c", ROWS_B, method="fedavg", sampler="uniform")
    labels = [r.label for r in load_runs([two_runs[1], c])]
    assert labels == ["fedavg/uniform (b)", "fedavg/uniform (c)"]
    out = tmp_path / "by.png"
    assert main([*map(str, two_runs), "--out", str(out), "--label-by", "sampler.name,seed"]) == 0
    assert out.stat().st_size > 0


def test_split_common_keeps_labels_that_would_vanish():
    assert split_common(["a/b", "a/b"]) == ([], ["a/b", "a/b"])
    assert split_common(["x=1", "x=1 y=2"]) == ([], ["x=1", "x=1 y=2"])
    assert split_common(["only"]) == ([], ["only"])


def test_cli_error_on_empty_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    assert "no metrics.csv found" in capsys.readouterr().err


def test_errors_for_missing_path_and_bad_cells(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_runs([tmp_path / "nope"])
    d = write_run(tmp_path / "bad", ["1,0.1,2,oops,,,,,,,,,,0"])
    with pytest.raises(ConfigError, match="not a number"):
        load_runs([d])
    e = write_run(tmp_path / "empty", ["1,0.1,2,,,,,,,,,,,0"])
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_runs([e])


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.plot", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no metrics.csv found" in proc.stderr and "Traceback" not in proc.stderr
