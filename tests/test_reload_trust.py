"""Issue 11, item 1, over a real server: /admin/reload cannot be made to run code.

A real uvicorn server on a free loopback port, the admin key set, and the attack as reported:
a pickle that creates a marker file when unpickled, with a manifest whose sha256 vouches for
it. Whatever the reload names — the pickle inside the artifacts directory, outside it, behind a
symlink or `..` — the answer is a 422 naming the `artifact` field, the marker never appears,
and the old model keeps routing. With an artifact key set, only signed artifacts load.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fakes import LiveServer

from models.artifact import KEY_ENV, MANIFEST, file_sha256, sign_artifact
from serving import create_app, load_settings

ADMIN_KEY = "reload-trust-admin-key"
ADMIN = {"X-API-Key": ADMIN_KEY}
SIGNING_KEY = "reload-trust-signing-key-0123456789"


class RunsCode:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def plant_old_format(folder: Path, marker: Path) -> Path:
    """The attack from the issue: router.joblib runs code on unpickling; the hash matches."""
    folder.mkdir(parents=True)
    (folder / "router.joblib").write_bytes(pickle.dumps(RunsCode(marker)))
    manifest = {
        "format_version": 1,
        "payload": {"file": "router.joblib", "sha256": file_sha256(folder / "router.joblib")},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


class Service:
    def __init__(self, url: str, root: Path, marker: Path) -> None:
        self.url, self.root, self.marker = url, root, marker
        self.client = httpx.Client(base_url=url, timeout=30)

    def reload(self, artifact: str | None) -> httpx.Response:
        body = None if artifact is None else {"artifact": artifact}
        return self.client.post("/admin/reload", json=body, headers=ADMIN)

    def version(self) -> str:
        response = self.client.post("/route", json={"prompt": "Still the old model?"})
        assert response.status_code == 200
        return response.json()["router_version"]


def _serve(tiny_artifact: Path, catalog_path: Path, tmp_path: Path) -> Iterator[Service]:
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_artifact, root / "current")
    config = load_settings(artifact=str(root / "current"), catalog=str(catalog_path))
    server = LiveServer(create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": ADMIN_KEY}))
    url = server.start()
    service = Service(url, root, tmp_path / "pwned")
    try:
        yield service
    finally:
        service.client.close()
        server.stop()


@pytest.fixture
def service(tiny_artifact, catalog_path, tmp_path, monkeypatch) -> Iterator[Service]:
    monkeypatch.delenv(KEY_ENV, raising=False)
    yield from _serve(tiny_artifact, catalog_path, tmp_path)


@pytest.fixture
def signed_service(tiny_artifact, catalog_path, tmp_path, monkeypatch) -> Iterator[Service]:
    # The key is read by the loader from the process environment, the server's included.
    monkeypatch.setenv(KEY_ENV, SIGNING_KEY)
    signed = tmp_path / "signed-source"
    shutil.copytree(tiny_artifact, signed)
    sign_artifact(signed, SIGNING_KEY.encode())
    yield from _serve(signed, catalog_path, tmp_path)


def test_old_format_pickle_inside_the_directory_is_refused_unopened(service: Service) -> None:
    version = service.version()
    plant_old_format(service.root / "evil", service.marker)
    response = service.reload("evil")
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("reload_failed", "artifact")
    evil = (service.root / "evil").resolve()
    assert error["message"] == (
        f"{evil}: this artifact uses the old format 1 (a pickled router.joblib, which promptroute "
        f"no longer opens); retrain it with `promptroute train --logs LOGS --out {evil}`; "
        f"still serving router {version}"
    )
    assert not service.marker.exists()
    assert service.version() == version


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("absolute", id="absolute-path-outside"),
        pytest.param("dotdot", id="dotdot"),
        pytest.param("symlink", id="symlink-inside-pointing-out"),
    ],
)
def test_reload_outside_the_artifacts_directory_is_refused(
    service: Service, tmp_path: Path, where: str
) -> None:
    version = service.version()
    evil = plant_old_format(tmp_path / "elsewhere" / "evil", service.marker)
    if where == "absolute":
        value = str(evil)
    elif where == "dotdot":
        value = "../elsewhere/evil"
    else:
        (service.root / "latest").symlink_to(evil)
        value = "latest"
    response = service.reload(value)
    assert response.status_code == 422
    assert response.json() == {
        "error": {
            "code": "artifact_outside_dir",
            "field": "artifact",
            "message": f"artifact: {value!r} is not inside the artifacts directory "
            f"{service.root.resolve()}; name one of its artifacts (known: current); "
            f"still serving router {version}",
        }
    }
    assert not service.marker.exists()
    assert service.version() == version


def test_reload_by_name_inside_the_directory_works(service: Service, tiny_artifact: Path) -> None:
    shutil.copytree(tiny_artifact, service.root / "v2")
    response = service.reload("v2")
    assert response.status_code == 200
    assert response.json()["artifact"] == str((service.root / "v2").resolve())
    # No body: back to the configured artifact, which needs no directory check.
    assert service.reload(None).status_code == 200


def test_with_a_key_only_signed_artifacts_reload(signed_service: Service) -> None:
    service = signed_service
    version = service.version()
    shutil.copytree(service.root / "current", service.root / "unsigned")
    (service.root / "unsigned" / "signature.json").unlink()
    response = service.reload("unsigned")
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("reload_failed", "artifact")
    unsigned = (service.root / "unsigned").resolve()
    assert error["message"].startswith(
        f"{unsigned}: unsigned artifact, and {KEY_ENV} is set, so only artifacts signed with "
        "that key load"
    )
    sign_artifact(service.root / "unsigned", b"an-attacker-key-0123456789")
    response = service.reload("unsigned")
    assert response.status_code == 422
    assert "the signature does not match" in response.json()["error"]["message"]
    sign_artifact(service.root / "unsigned", SIGNING_KEY.encode())
    response = service.reload("unsigned")
    assert response.status_code == 200
    assert response.json()["router_version"] == version
