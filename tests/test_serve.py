"""`sibrar serve` as a real uvicorn process on 127.0.0.1, queried over HTTP, against a small ML-100K run.

The run's item tower reads genres + year only, so every item (old or new) is embedded from side
information and a new item with the features of an existing one gets exactly its score. The page at
/ is driven in a real headless Chromium (Debian chromium + chromium-driver, installed when missing and
apt-get is usable, as in CI where tests run as root; skipped with the reason otherwise). Set
SIBRAR_SCREENSHOT=PATH to keep a screenshot of the page after a movie was added.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from sibrar.cli import main
from sibrar.retrieval.index import IndexConfig
from sibrar.retrieval.recommender import Recommender

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a small SiBraR on ML-100K (cold-item split); item tower: genres + year."""
    folder = tmp_path_factory.mktemp("serve")
    config = {
        "data": {"dataset": str(ml100k_dir), "item_modalities": {
            "genres": {"column": "genres", "kind": "tags", "min_tag_count": 1}, "year": {"column": "release_year"}}},
        "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 16,
                  "item": {"modalities": ["genres", "year"], "common_dim": 16, "branch": {"hidden": [16]}}},
        "train": {"epochs": 1, "batch_size": 1024, "n_negatives": 3, "seed": 0},
        "eval": {"ks": [10]},
    }
    cfg = folder / "run.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(cfg), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def rec(run_dir: Path) -> Recommender:
    return Recommender.load(run_dir, index_config=IndexConfig(kind="flat"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **kw: object) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)  # type: ignore[arg-type]

    def post(self, path: str, body: object = None, **kw: object) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=30, **kw)  # type: ignore[arg-type]

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(run_dir: Path, log: Path, *extra: str) -> Server:
    """`sibrar serve RUN_DIR --port P` in a child process; returns once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    fh = open(log, "ab")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([sys.executable, "-m", "sibrar.cli", "serve", str(run_dir), "--port", str(port), *extra],
                               stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sibrar serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    server.stop()
    raise AssertionError(f"sibrar serve did not answer within 180 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server on its own copy of the run (added items are written next to it)."""
    copy = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(run_dir, copy)
    srv = start_server(copy, copy.parent / "server.log")
    yield srv
    srv.stop()


def ids(response: requests.Response) -> list[str]:
    return [i["item_id"] for i in response.json()["items"]]


# ------------------------------------------------------------------------------------ queries


def test_health_names_the_run_and_the_features_new_items_take(server, rec):
    body = server.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "sibrar" and body["n_users"] == len(rec.user_ids)
    assert body["n_items"] >= rec.n_items and {"genres", "year"} <= set(body["item_modalities"])


def test_user_top_k_is_the_recommenders_with_titles_and_no_seen_item(server, rec):
    for user in ("1", "42", "900"):
        got = server.get(f"/users/{user}/recommendations", params={"k": 15})
        assert got.status_code == 200
        items = got.json()["items"]
        expected = rec.recommend([user], 15)
        assert [i["item_id"] for i in items] == expected["item_id"].to_list()
        np.testing.assert_allclose([i["score"] for i in items], expected["score"].to_numpy(), rtol=1e-5)
        u = rec.user_ids.idx([user])[0]
        seen = set(rec.item_ids(rec.seen[[u]].indices).tolist())
        assert not seen & {i["item_id"] for i in items}
        assert all(i["title"] for i in items) and [i["rank"] for i in items] == list(range(1, 16))
    history = server.get("/users/1").json()["history"]
    assert {h["item_id"] for h in history} == seen_of(rec, "1") and history[0]["title"]


def seen_of(rec: Recommender, user: str) -> set[str]:
    u = rec.user_ids.idx([user])[0]
    return set(rec.item_ids(rec.seen[[u]].indices).tolist())


def test_items_are_listed_in_pages_with_titles(server, rec):
    first = server.get("/items", params={"limit": 5}).json()
    assert first["n_items"] >= rec.n_items and len(first["items"]) == 5
    assert [i["item_id"] for i in first["items"]] == rec.item_ids(np.arange(5)).tolist()
    assert first["items"][0]["title"] == server.get(f"/items/{first['items'][0]['item_id']}").json()["title"]
    second = server.get("/items", params={"offset": 5, "limit": 5}).json()
    assert not {i["item_id"] for i in first["items"]} & {i["item_id"] for i in second["items"]}


def test_similar_items_exclude_the_item_and_rank_by_inner_product(server, rec):
    got = server.get("/items/50/similar", params={"k": 5}).json()
    assert got["title"] == "Star Wars" and len(got["items"]) == 5 and "50" not in ids_of(got)
    emb = rec.item_embeddings()
    pos = rec.item_position("50")
    scores = emb @ emb[pos]
    scores[pos] = -np.inf
    best = rec.item_ids(np.argsort(-scores, kind="stable")[:5]).tolist()
    assert ids_of(got) == best or np.allclose([i["score"] for i in got["items"]], np.sort(scores)[::-1][:5], rtol=1e-5)


def ids_of(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_new_user_from_liked_items_matches_the_recommender_and_excludes_them(server, rec):
    got = server.post("/recommendations", {"item_ids": ["50", "181", "172"], "k": 8})
    assert got.status_code == 200
    assert ids(got) == rec.recommend_new_user(["50", "181", "172"], k=8)["item_id"].to_list()
    assert not {"50", "181", "172"} & set(ids(got))


@pytest.mark.parametrize(("method", "path", "body", "status", "expected"), [
    ("get", "/users/nobody/recommendations", None, 404, "unknown user id 'nobody'"),
    ("get", "/users/nobody", None, 404, "unknown user id 'nobody'"),
    ("get", "/items/no-such-item/similar", None, 404, "unknown item id 'no-such-item'"),
    ("delete", "/items/no-such-item", None, 404, "unknown item id 'no-such-item'"),
    ("get", "/users/1/recommendations?k=0", None, 422, "query.k"),
    ("get", "/users/1/recommendations?k=abc", None, 422, "query.k"),
    ("get", "/users/1/recommendations?k=100000", None, 422, "query.k"),
    ("post", "/items", {"title": "x", "features": {"year": 1990}}, 422, "body.item_id: Field required"),
    ("post", "/items", {"item_id": "a", "features": {"year": 1990}, "colour": "red"}, 422, "body.colour"),
    ("post", "/items", {"item_id": "a", "features": {"year": "abc"}}, 422, "'year'"),
    ("post", "/items", {"item_id": "a", "features": {"genres": ["Space-Opera"]}}, 422, "'Space-Opera'"),
    ("post", "/items", {"item_id": "a", "features": {"budget": 3}}, 422, "features.budget: not a item feature"),
    ("post", "/items", {"item_id": "a", "features": {}}, 422, "features: give at least one"),
    ("post", "/items", {"item_id": "50", "features": {"year": 1990}}, 409, "'50' is already in the catalogue"),
    ("post", "/items", [1, 2], 422, "body"),
    ("post", "/recommendations", {}, 422, "item_ids, features"),
    ("post", "/recommendations", {"item_ids": ["nope"]}, 422, "item_ids: unknown item id 'nope'"),
    ("post", "/recommendations", {"item_ids": "50"}, 422, "body.item_ids"),
    ("post", "/recommendations", {"item_ids": ["50"], "k": -1}, 422, "body.k"),
])
def test_bad_requests_get_a_one_line_message_naming_the_field(server, method, path, body, status, expected):
    got = getattr(server, method)(path, body) if method == "post" else getattr(server, method)(path)
    assert got.status_code == status, got.text
    detail = got.json()["detail"]
    assert isinstance(detail, str) and expected in detail and "\n" not in detail
    assert "Traceback" not in got.text and 'File "' not in got.text


def test_malformed_json_and_oversized_bodies_are_refused(server):
    got = requests.post(server.url + "/items", data="{not json", headers={"content-type": "application/json"}, timeout=30)
    assert got.status_code == 422 and "body" in got.json()["detail"]
    big = {"item_id": "big", "title": "x" * 100_000, "features": {"year": 1990}}
    got = server.post("/items", big)
    assert got.status_code == 413 and "larger than" in got.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"item_id": "big2", "title": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'", "features": {"year": 1990}}'

    got = requests.post(server.url + "/items", data=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert got.status_code == 413
    assert server.get("/items/big2").status_code == 404


def test_openapi_documents_the_typed_models(server):
    spec = server.get("/openapi.json").json()
    assert {"/users/{user_id}/recommendations", "/items", "/items/{item_id}/similar", "/recommendations"} <= set(spec["paths"])
    assert {"NewItem", "NewUser", "Recommendations", "AddedItem"} <= set(spec["components"]["schemas"])
    assert server.get("/docs").status_code == 200


# ------------------------------------------------------------------------------------ catalogue changes


def twin_of_top_item(server: Server, rec: Recommender, user: str) -> tuple[str, dict]:
    """The features of ``user``'s first recommendation (a new item with them ties with it)."""
    top = server.get(f"/users/{user}/recommendations", params={"k": 1}).json()["items"][0]["item_id"]
    return top, features_of(rec, top)


def features_of(rec: Recommender, item_id: str) -> dict:
    row = rec.run.prepared.dataset.item_table.filter(item_id=item_id).row(0, named=True)
    return {"genres": row["genres"], "year": row["release_year"]}


def test_a_new_item_reaches_the_users_it_fits_and_can_be_removed(server, rec):
    top, features = twin_of_top_item(server, rec, "7")
    added = server.post("/items", {"item_id": "twin-7", "title": "Twin of 7's favourite", "features": features})
    assert added.status_code == 201, added.text
    body = added.json()
    assert any(f["user_id"] == "7" for f in body["fits"]) or len(body["fits"]) >= 10
    recs = server.get("/users/7/recommendations", params={"k": 3}).json()["items"]
    assert {"twin-7", top} <= {i["item_id"] for i in recs}
    twin = next(i for i in recs if i["item_id"] == "twin-7")
    assert twin["title"] == "Twin of 7's favourite"
    assert twin["score"] == pytest.approx(recs[0]["score"], rel=1e-5)  # same features, same embedding
    assert server.post("/items", {"item_id": "twin-7", "features": features}).status_code == 409
    twin_similar = server.get("/items/twin-7/similar", params={"k": 5}).json()
    top_similar = server.get(f"/items/{top}/similar", params={"k": 5}).json()
    assert twin_similar["title"] == "Twin of 7's favourite"  # same vector: same neighbours, up to the pair itself
    assert [i for i in ids_of(twin_similar) if i != top][:4] == [i for i in ids_of(top_similar) if i != "twin-7"][:4]
    removed = server.delete("/items/twin-7")
    assert removed.status_code == 200 and removed.json()["n_items"] == body["n_items"] - 1
    assert "twin-7" not in ids(server.get("/users/7/recommendations", params={"k": 20}))
    assert server.get("/items/twin-7").status_code == 404
    assert server.post("/items", {"item_id": "twin-7", "features": features}).status_code == 201  # the id is free again


def test_concurrent_adds_and_queries_see_whole_states_only(server, rec):
    before = server.get("/health").json()["n_items"]
    errors: list[str] = []
    valid_ids = set(rec.item_ids(np.arange(rec.n_items)).tolist())
    added_ids = {f"c{w}-{i}" for w in range(4) for i in range(15)}
    features = features_of(rec, "1")

    def adder(w: int) -> None:
        for i in range(15):
            got = server.post("/items", {"item_id": f"c{w}-{i}", "title": f"concurrent {w}/{i}", "features": features})
            if got.status_code != 201:
                errors.append(got.text)

    def reader(w: int) -> None:
        for i in range(30):
            got = server.get(f"/users/{1 + (w * 30 + i) % 900}/recommendations", params={"k": 10})
            body = got.json()
            scores = [x["score"] for x in body.get("items", [])]
            known = {x["item_id"] for x in body.get("items", [])} <= valid_ids | added_ids | {"twin-7"}
            if got.status_code != 200 or len(scores) != 10 or scores != sorted(scores, reverse=True) or not known:
                errors.append(got.text)

    threads = [threading.Thread(target=adder, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=reader, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert server.get("/health").json()["n_items"] == before + 60
    assert all(server.get(f"/items/{i}").json()["title"].startswith("concurrent") for i in sorted(added_ids)[:5])


def test_a_restart_keeps_added_and_removed_items(run_dir, rec, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("served"))
    first = start_server(copy, tmp_path / "a.log")
    try:
        _, features = twin_of_top_item(first, rec, "3")
        assert first.post("/items", {"item_id": "keep", "title": "Kept", "features": features}).status_code == 201
        assert first.post("/items", {"item_id": "gone", "features": features}).status_code == 201
        assert first.delete("/items/gone").status_code == 200
        assert first.delete("/items/50").status_code == 200  # a run item can be taken out too
        before = first.get("/users/3/recommendations", params={"k": 10}).json()
    finally:
        first.stop()
    assert sorted(p.name for p in (copy / "served").iterdir()) == [
        "00000001-add.json", "00000002-add.json", "00000003-remove.json", "00000004-remove.json"]
    second = start_server(copy, tmp_path / "b.log")
    try:
        health = second.get("/health").json()
        assert health["n_added"] == 2 and health["n_items"] == rec.n_items
        after = second.get("/users/3/recommendations", params={"k": 10}).json()
        assert set(ids_of(after)) == set(ids_of(before)) and "keep" in ids_of(after)  # twins may swap (last-bit ties)
        np.testing.assert_allclose([i["score"] for i in after["items"]], [i["score"] for i in before["items"]], rtol=1e-5)
        assert second.get("/items/keep").json()["title"] == "Kept"
        assert second.get("/items/gone").status_code == 404 and second.get("/items/50").status_code == 404
    finally:
        second.stop()


def test_a_torn_event_file_is_reported_by_name(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("served"))
    (copy / "served").mkdir()
    (copy / "served" / "00000001-add.json").write_text('{"items": [', encoding="utf-8")
    assert main(["serve", str(copy), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "00000001-add.json" in err and "unreadable" in err


# ------------------------------------------------------------------------------------ MLflow pyfunc


def test_pyfunc_model_logged_by_train_predicts_the_top_k(ml100k_dir, run_dir, rec, tmp_path, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd
    from mlflow import MlflowClient

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # an absolute URI: MLflow caches stores by URI string, so a relative sqlite:///mlflow.db would leak
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--no-progress",
                 "--tracking-uri", uri]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sibrar")
    (logged,) = client.search_logged_models([experiment.experiment_id], filter_string="name = 'recommender'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    got = model.predict(pd.DataFrame({"user_id": ["1", "42"], "k": [5, 5]}))
    assert list(got.columns) == ["user_id", "rank", "item_id", "title", "score"] and len(got) == 10
    same_run = Recommender.load(tmp_path / "run", index_config=IndexConfig(kind="flat"))  # deterministic: same weights
    for user in ("1", "42"):
        expected = same_run.recommend([user], 5)
        rows = got[got["user_id"] == user]
        assert rows["item_id"].tolist() == expected["item_id"].to_list()
        np.testing.assert_allclose(rows["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-5)
    assert rows["title"].iloc[0]
    with pytest.raises(Exception, match="unknown user id 'nobody'"):
        model.predict(pd.DataFrame({"user_id": ["nobody"]}))


# ------------------------------------------------------------------------------------ the page

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,900")


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing the Debian packages when missing."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=False, env=env,
                       capture_output=True)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def test_page_shows_a_user_and_a_new_movie_reaches_the_users_it_fits(run_dir, rec, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("served"))
    server = start_server(copy, tmp_path / "server.log")
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(server.url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "sibrar" in browser.find_element(By.ID, "health").text
        # a user's history and recommendations, with titles
        box = browser.find_element(By.ID, "user-input")
        box.clear()
        box.send_keys("7")
        browser.find_element(By.ID, "load-user").click()
        wait.until(lambda d: d.find_element(By.ID, "user-input").get_attribute("value") == "7"
                   and len(d.find_elements(By.CSS_SELECTOR, "#recs li")) == 10)
        recs = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#recs li")]
        expected = server.get("/users/7/recommendations", params={"k": 10}).json()["items"]
        assert recs[0].startswith(f"{expected[0]['title']} [{expected[0]['item_id']}]")
        assert browser.find_elements(By.CSS_SELECTOR, "#history li")
        # a new movie with the genres and year of user 7's favourite: it enters their list, highlighted
        features = features_of(rec, expected[0]["item_id"])
        browser.find_element(By.ID, "new-title").send_keys("Brand New Movie")
        browser.find_element(By.ID, "new-year").send_keys(str(int(features["year"])))
        for genre in features["genres"]:
            browser.find_element(By.CSS_SELECTOR, f"#new-genres input[value=\"{genre}\"]").click()
        browser.find_element(By.ID, "add-item").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "add-result"), "Added Brand New Movie"))
        fits = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#fits a")]
        assert len(fits) >= 2  # a twin of a favourite fits many users
        browser.find_element(By.XPATH, f"//a[text()='{fits[1]}']").click()  # another user of the list
        wait.until(lambda d: d.find_element(By.ID, "user-input").get_attribute("value") == fits[1].split()[1]
                   and d.find_elements(By.CSS_SELECTOR, "#recs li.new"))
        (new,) = browser.find_elements(By.CSS_SELECTOR, "#recs li.new")
        assert new.text.startswith("Brand New Movie [new-")
        assert server.get("/health").json()["n_added"] == 1
        if os.environ.get("SIBRAR_SCREENSHOT"):
            browser.save_screenshot(os.environ["SIBRAR_SCREENSHOT"])
        # a bad add shows the server's one-line message on the page
        browser.find_element(By.ID, "new-year").clear()
        for box in browser.find_elements(By.CSS_SELECTOR, "#new-genres input:checked"):
            box.click()
        browser.find_element(By.ID, "add-item").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "add-error"), "features"))
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ text modalities


def test_new_item_text_is_rendered_with_the_runs_template_and_encoded_by_its_encoder(synthetic_shared_dir, tmp_path):
    """A twin of a run item (same genres and year) gets the same text vector, hence the same embedding."""
    from sibrar.encoders.text import encode_text
    from sibrar.serve.service import Service

    data = tmp_path / "data"
    shutil.copytree(synthetic_shared_dir, data / synthetic_shared_dir.name)
    folder = data / synthetic_shared_dir.name
    encode_text(folder, modality="desc", template="{genres} films from {year}", progress=False)
    config = {
        "data": {"dataset": str(folder), "k_core": 0,
                 "item_modalities": {"genres": {"column": "genres"}, "year": {"column": "year"}, "desc": {"kind": "vector"}}},
        "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 8,
                  "item": {"modalities": ["genres", "desc"], "common_dim": 8, "branch": {"hidden": [8]}}},
        "train": {"epochs": 1, "batch_size": 64, "n_negatives": 3}, "eval": {"ks": [10]},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    service = Service.load(tmp_path / "run")
    assert set(service.texts) == {"desc"} and "year" in service.texts["desc"].types
    table = service.rec.run.prepared.dataset.item_table
    row = next(r for r in table.iter_rows(named=True) if r["genres"] and r["year"] is not None)
    service.add_item("twin", "Twin", {"genres": row["genres"], "year": row["year"]})
    pos = service.rec.item_position(row["item_id"])
    np.testing.assert_allclose(service.rec.item_embeddings(np.array([service.rec.item_position("twin")])),
                               service.rec.item_embeddings(np.array([pos])), rtol=1e-5, atol=1e-6)
    # a text given as a string is encoded as it is; a different text moves the item
    service.add_item("plot", None, {"genres": row["genres"], "desc": "a slow drama about lighthouse keepers"})
    assert not np.allclose(service.rec.item_embeddings(np.array([service.rec.item_position("plot")])),
                           service.rec.item_embeddings(np.array([pos])))
    again = Service.load(tmp_path / "run")  # the restart re-renders and re-encodes the same texts
    np.testing.assert_allclose(again.rec.item_embeddings(np.array([again.rec.item_position("plot")])),
                               service.rec.item_embeddings(np.array([service.rec.item_position("plot")])), rtol=1e-5)
