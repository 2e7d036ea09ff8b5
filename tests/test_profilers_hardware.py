"""Hardware profiles: the registry, user JSON profiles, and clear errors."""

from __future__ import annotations

import json

import pytest

from prunesearch.profilers.hardware import (
    BUILTIN_PROFILES,
    HardwareError,
    HardwareProfile,
    get_profile,
    load_profile,
    load_profile_dir,
)


def test_registry_has_the_datasheet_devices_with_dense_figures():
    assert set(BUILTIN_PROFILES) == {"h100-sxm", "h200", "a100-80g", "l4", "rtx4090"}
    assert get_profile("h100-sxm").peak_flops("bf16") == pytest.approx(989.4e12)  # not the 1,979 sparse figure
    assert get_profile("h200").bandwidth_bytes_per_s == pytest.approx(4.8e12)
    assert get_profile("l4").bf16_tflops == pytest.approx(121.0)
    for profile in BUILTIN_PROFILES.values():
        assert profile.fp32_tflops < profile.bf16_tflops
        assert 0 < profile.compute_efficiency <= 1 and 0 < profile.bandwidth_efficiency <= 1


def test_user_profile_round_trips_through_json(tmp_path):
    mine = HardwareProfile("my-gpu", 100.0, 90.0, 20.0, 1000.0, 48.0, launch_overhead_us=3.0)
    path = tmp_path / "my-gpu.json"
    path.write_text(json.dumps(mine.to_dict()))
    assert load_profile(path) == mine
    assert get_profile(str(path)) == mine
    assert load_profile_dir(tmp_path) == {"my-gpu": mine}
    assert get_profile("my-gpu", extra_dir=tmp_path) == mine


def test_user_profiles_are_found_by_name_under_prunesearch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESEARCH_HOME", str(tmp_path))
    (tmp_path / "hardware").mkdir()
    mine = HardwareProfile("lab-box", 50.0, 50.0, 10.0, 500.0, 16.0)
    (tmp_path / "hardware" / "lab.json").write_text(json.dumps(mine.to_dict()))
    assert get_profile("lab-box") == mine


def test_unknown_name_lists_known_profiles():
    with pytest.raises(HardwareError, match=r"unknown hardware 'b200'.*a100-80g.*h100-sxm.*rtx4090"):
        get_profile("b200")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"name": "x"}', "missing fields"),
        (json.dumps(BUILTIN_PROFILES["l4"].to_dict() | {"colour": "green"}), "unknown fields"),
    ],
)
def test_malformed_profile_files_give_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(HardwareError, match=message):
        load_profile(path)


def test_missing_file_and_unknown_dtype():
    with pytest.raises(HardwareError, match="does not exist"):
        get_profile("/nonexistent/profile.json")
    with pytest.raises(HardwareError, match="unknown dtype"):
        get_profile("h200").peak_flops("int4")
