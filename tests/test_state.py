"""``tokcal.json``: its one writer and reader (tokcal.jobs.state)."""

from __future__ import annotations

import json

from tokcal.core.spec import DecisionSpec
from tokcal.jobs.settings import TrackingSettings
from tokcal.jobs.state import (
    STATE_FILE,
    find_state,
    read_state,
    settings_from_state,
    write_state,
)


def test_round_trip_and_found_beside_checkpoints(tmp_path):
    settings = TrackingSettings(spec=DecisionSpec(labels=("Yes", "No")), n_bins=10, backend="local")
    write_state(tmp_path, [{"backend": "local", "run_id": "r1", "local_dir": "x"}], settings)
    (tmp_path / "checkpoint-5").mkdir()
    found = find_state([tmp_path / "checkpoint-5"])
    assert found == tmp_path / STATE_FILE
    state = read_state(found)
    assert state["trackers"][0]["run_id"] == "r1"
    assert settings_from_state(state) == settings


def test_no_password_anywhere_in_the_file(tmp_path):
    uri = "https://alice:s3cret-pw@mlflow.example.com/"
    settings = TrackingSettings(backend="mlflow", tracking_uri=uri)
    write_state(tmp_path, [{"backend": "mlflow", "run_id": "abc", "tracking_uri": uri}], settings)
    text = (tmp_path / STATE_FILE).read_text()
    assert "s3cret-pw" not in text
    state = json.loads(text)
    assert state["tracking_uri"] == "https://alice:***@mlflow.example.com/"
    assert state["trackers"][0]["tracking_uri"] == "https://alice:***@mlflow.example.com/"


def test_no_state_means_default_settings():
    assert settings_from_state(None) == TrackingSettings()
    assert find_state(["/nonexistent/path"]) is None
