"""`python -m pipelines.serve`'s local Prefect server, started on a port other than 4200."""

import json
import socket
import urllib.request

from pipelines.serve import start_server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
