"""A ``servetune calibrate`` profile is selected by the simulator for the (model, GPU, TP) it
measured: rows are tagged with the catalog's name of the device (``cpu-host`` = the catalog's
``cpu``; torch's CUDA names resolve through the GPU aliases), and the run's notes say so."""

from __future__ import annotations

import json

import pytest

from backends.sim.catalog import get_gpu
from tuner.calibration.microbench import device_label
from tuner.calibration.profile import read_profile


@pytest.mark.parametrize("torch_name,catalog", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"), ("NVIDIA L40S", "l40s"), ("NVIDIA B200", "b200")])
def test_torch_device_names_resolve_to_the_catalog(torch_name, catalog):
    assert get_gpu(torch_name).name == catalog and device_label(torch_name) == catalog


def test_device_label_keeps_unknown_names_and_tags_cpu():
    assert device_label("cpu") == "cpu-host" and get_gpu("cpu-host").name == "cpu"
    assert device_label("Some Future GPU") == "Some Future GPU"


def test_calibrate_then_simulate_uses_the_profile(tmp_path, run_cli_full):
    pytest.importorskip("torch")
    prof = tmp_path / "tiny.parquet"
    code, out, _ = run_cli_full("calibrate", "--model", "tiny-llama", "--device", "cpu", "--quick", "--out", prof)
    assert code == 0
    assert "-g cpu --tp 1 --profile" in out
    assert set(read_profile(prof).device) == {"cpu-host"}
    out = tmp_path / "run.json"
    assert run_cli_full("simulate", "-w", "azure-conv", "--first", "20", "-m", "tiny-llama", "-g", "cpu",
                        "--profile", prof, "-o", out)[0] == 0
    (note,) = [n for n in json.loads(out.read_text())["notes"] if n.startswith("cost model:")]
    assert note.startswith("cost model: profile:") and "tiny-llama tp1" in note and "attn_decode" in note
    # another GPU: not this profile's rows, and the note says what the profile has
    assert run_cli_full("simulate", "-w", "azure-conv", "--first", "20", "-m", "tiny-llama", "-g", "h100-sxm",
                        "--profile", prof, "-o", out)[0] == 0
    (note,) = [n for n in json.loads(out.read_text())["notes"] if n.startswith("cost model:")]
    assert "has no tiny-llama h100-sxm tp1 rows (it has: tiny-llama cpu-host tp1)" in note


def test_device_name_option_tags_a_catalog_gpu(tmp_path, run_cli_full):
    pytest.importorskip("torch")
    from backends.sim.catalog import get_model
    from backends.sim.profiled import instance_cost_model
    from tuner.calibration.profile import make_profile, write_profile

    prof = tmp_path / "h100.csv"
    assert run_cli_full("calibrate", "--model", "tiny-llama", "--device", "cpu", "--quick", "--out", prof,
                        "--device-name", "NVIDIA H100 80GB HBM3")[0] == 0
    df = read_profile(prof)
    assert set(df.device) == {"h100-sxm"}
    cm = instance_cost_model(get_model("tiny-llama"), get_gpu("h100"), 1, profile=str(prof))
    assert cm.source.startswith("profile:") and "h100-sxm tiny-llama tp1" in cm.source
    # an older profile tagged with torch's raw CUDA name is matched through the catalog's aliases
    raw = tmp_path / "raw.csv"
    write_profile(make_profile(df.assign(device="NVIDIA H100 80GB HBM3").to_dict("records")), raw)
    cm = instance_cost_model(get_model("tiny-llama"), get_gpu("h100-sxm"), 1, profile=str(raw))
    assert cm.source.startswith("profile:") and "rows of NVIDIA H100 80GB HBM3" in cm.source
