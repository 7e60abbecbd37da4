"""The UIs: `python -m pipelines.serve`'s Prefect server on a port other than 4200, and
`python -m magvit.mlflow_ui` on the runs of a clone that was moved."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

from mlflow.tracking import MlflowClient

from magvit.runtime.mlflow_tracking import experiment_id, relocate_artifacts, tracking_uri
from pipelines.serve import start_server

from conftest import free_port, wait_for_url


def test_the_ui_of_a_server_on_another_port_calls_that_port(tmp_path, monkeypatch):
    """The UI asks /ui-settings where the API is; it must not answer the default 4200."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # a fresh database
    for name in ("PREFECT_API_URL", "PREFECT_SERVER_UI_API_URL", "PREFECT_UI_API_URL"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    server = start_server("127.0.0.1", port, tmp_path / "server.log", timeout_s=180)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as reply:
            settings = json.load(reply)
        admin = f"http://127.0.0.1:{port}/api/admin/settings"
        with urllib.request.urlopen(admin, timeout=10) as reply:
            server_settings = json.load(reply)["server"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    assert server_settings["analytics_enabled"] is False, "no telemetry leaves the machine"


def test_a_moved_clone_shows_its_mlflow_artifacts(tmp_path, monkeypatch):
    """MLflow stores artifact locations as absolute paths; after the clone moves, the stages
    and the UI launcher point them at the clone's own mlartifacts/, and the UI serves them."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    old, new = tmp_path / "old-clone", tmp_path / "new-clone"
    old.mkdir()
    monkeypatch.chdir(old)
    client = MlflowClient(tracking_uri())
    run_id = client.create_run(experiment_id(client, "moved")).info.run_id
    (old / "note.txt").write_text("hello")
    client.log_artifact(run_id, str(old / "note.txt"), "notes")
    shutil.move(old, new)
    monkeypatch.chdir(new)
    client = MlflowClient(tracking_uri())
    assert client.list_artifacts(run_id, "notes") == [], "the old location is gone"

    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "magvit.mlflow_ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/get-artifact?path=notes/note.txt&run_uuid={run_id}"
    try:
        served = wait_for_url(url, ui, "the UI").decode()
    finally:
        ui.terminate()
        output = ui.communicate(timeout=30)[0]
    assert served == "hello"
    assert f"{(old / 'mlartifacts').as_uri()} now point into ./mlartifacts" in output
    assert client.get_run(run_id).info.artifact_uri.startswith((new / "mlartifacts").as_uri())
    assert relocate_artifacts(tracking_uri()) == [], "done once"
    # a copy of a clone that still exists keeps pointing at the original's artifacts
    shutil.copytree(new, tmp_path / "copy")
    assert relocate_artifacts(f"sqlite:///{tmp_path / 'copy' / 'mlflow.db'}") == []
