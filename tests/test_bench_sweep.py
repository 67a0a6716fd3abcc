"""The sweep-throughput results file: a mode measured again replaces only itself, and the derived figures
(ratio to PyTorch, agreement of the modes' losses, best mode) are recomputed from what the file then holds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from bench_sweep import remeasured, summarise  # noqa: E402

WORKLOAD = {"experiment": "optimizer_comparison", "presets": ["a"], "lr_multipliers": [1.0], "seeds": [0],
            "steps": 200}


def _result(modes: dict, torch_tph: float | None, losses: dict) -> dict:
    result = {"workload": dict(WORKLOAD), "modes": {m: {"trials_per_hour": tph} for m, tph in modes.items()},
              "final_val_losses": losses, "load_average_after": [0.0, 0.0, 0.0]}
    if torch_tph is not None:
        result["torch_nanogpt_sequential"] = {"trials_per_hour": torch_tph}
    return result


def test_a_remeasured_mode_replaces_its_old_figures_and_the_rest_are_kept():
    old = summarise(_result({"jobs1": 60.0, "jobs2": 90.0, "vmap": 70.0}, 120.0,
                            {"jobs1": {"t": 2.0}, "jobs2": {"t": 2.0}, "vmap": {"t": 2.0}}))
    old["written"] = "2026-12-03T22:48"
    assert old["best_mode"] == "jobs2" and old["modes"]["jobs1"]["ratio_to_torch"] == pytest.approx(0.5)
    new = summarise(_result({"vmap": 100.0}, 80.0, {"vmap": {"t": 2.2}, "torch_nanogpt": {"t": 1.0}}))
    merged = remeasured(old, new)
    assert [merged["modes"][m]["trials_per_hour"] for m in ("jobs1", "jobs2", "vmap")] == [60.0, 90.0, 100.0]
    assert merged["modes"]["jobs1"]["measured"] == "by 2026-12-03T22:48"
    assert merged["best_mode"] == "vmap"
    # Ratios against the PyTorch side measured now (80 trials/h), for every mode.
    assert merged["modes"]["jobs1"]["ratio_to_torch"] == pytest.approx(60 / 80)
    assert merged["modes"]["vmap"]["ratio_to_torch"] == pytest.approx(100 / 80)
    assert merged["max_relative_val_loss_difference_between_modes"] == pytest.approx(0.1)
    assert "written" not in merged


def test_without_pytorch_measured_again_the_old_side_stays_the_reference():
    old = summarise(_result({"jobs1": 60.0, "vmap": 70.0}, 120.0, {"jobs1": {"t": 2.0}, "vmap": {"t": 2.0}}))
    merged = remeasured(old, summarise(_result({"vmap": 240.0}, None, {"vmap": {"t": 2.0}})))
    assert merged["modes"]["vmap"]["ratio_to_torch"] == pytest.approx(2.0)
    assert merged["torch_nanogpt_sequential"]["trials_per_hour"] == 120.0


def test_another_workload_is_refused_in_one_line():
    old = summarise(_result({"jobs1": 60.0}, None, {"jobs1": {"t": 2.0}}))
    new = summarise(_result({"jobs1": 60.0}, None, {"jobs1": {"t": 2.0}}))
    new["workload"]["steps"] = 20
    with pytest.raises(SystemExit, match="workload"):
        remeasured(old, new)
