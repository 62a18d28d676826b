"""Model zoo and weights cache: downloads from a local HTTP server on 127.0.0.1 (nothing leaves the machine)."""
import hashlib
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vitlab.checkpoints import download as dl
from vitlab.checkpoints import zoo
from vitlab.checkpoints.zoo import ZooEntry
from vitlab.cli import main as cli_main

DATA = os.urandom(200_000)
DIGEST = hashlib.sha256(DATA).hexdigest()
INDEX = Path(zoo.__file__).resolve().parent.parent / "models" / "model_index.json"


class Server:
    """A tiny file server with Range support. ``drop_after``: the next request sends only that many body bytes
    and closes the connection; ``ignore_range``: answer 200 with the whole file even to a Range request."""

    def __init__(self):
        self.files = {"/w.pth": DATA}
        self.drop_after = None
        self.ignore_range = False
        self.requests = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if server.drop_after is not None:
                    payload, server.drop_after = payload[:server.drop_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    home = tmp_path / "cache"
    monkeypatch.setenv("VITLAB_HOME", str(home))
    monkeypatch.setattr(dl, "CHUNK", 16_384)  # several chunks per file
    return home


def add_entry(monkeypatch, server, name="vit_micro.test", sha256=None, path="/w.pth", direct=True):
    entry = ZooEntry(name, name.split(".")[0], server.url + path, "test", "synthetic", (("top-1", 1.0),), 64, 1.0,
                     sha256=sha256, direct=direct)
    monkeypatch.setattr(zoo, "ZOO", (*zoo.ZOO, entry))
    return entry


# --- the transfer ------------------------------------------------------------------------------------

def test_full_download_checks_the_hash(server, tmp_path):
    dest = tmp_path / "w.pth"
    assert dl.download(server.url + "/w.pth", dest, sha256=DIGEST.upper(), progress=False) == DIGEST
    assert dest.read_bytes() == DATA and not (tmp_path / "w.pth.part").exists()


def test_dropped_connection_resumes_with_range(server, tmp_path, capsys):
    dest, part = tmp_path / "w.pth", tmp_path / "w.pth.part"
    server.drop_after = 70_000
    with pytest.raises(dl.DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/w\.pth: .*"
                                                r"the partial file is kept for resuming"):
        dl.download(server.url + "/w.pth", dest, sha256=DIGEST, progress=False)
    assert part.read_bytes() == DATA[:70_000] and not dest.exists()
    assert dl.download(server.url + "/w.pth", dest, sha256=DIGEST, progress=True) == DIGEST
    assert dest.read_bytes() == DATA and not part.exists()
    assert server.requests[-1] == ("/w.pth", "bytes=70000-")
    assert "resuming at" in capsys.readouterr().err  # not a terminal: one plain line, no bar


def test_server_without_ranges_restarts_cleanly(server, tmp_path):
    part = tmp_path / "w.pth.part"
    part.write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    assert dl.download(server.url + "/w.pth", tmp_path / "w.pth", progress=False) == DIGEST
    assert (tmp_path / "w.pth").read_bytes() == DATA and server.requests[-1][1] is not None


def test_partial_file_the_server_cannot_continue_restarts(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(b"x" * (len(DATA) + 5))  # longer than the file: 416
    assert dl.download(server.url + "/w.pth", tmp_path / "w.pth", sha256=DIGEST, progress=False) == DIGEST


def test_network_error_is_one_clear_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dl.DownloadError, match=rf"^cannot download http://127\.0\.0\.1:{port}/w\.pth: "):
        dl.download(f"http://127.0.0.1:{port}/w.pth?sig=secret", tmp_path / "w.pth", progress=False, timeout=5)
    assert not list(tmp_path.iterdir()) or all(p.suffix == ".lock" for p in tmp_path.iterdir())


def test_web_page_instead_of_weights_is_refused(server, tmp_path):
    server.files["/page"] = b"<!DOCTYPE html><html>Google Drive can't scan this file for viruses</html>"
    with pytest.raises(dl.DownloadError, match="web page"):
        dl.download(server.url + "/page", tmp_path / "w.pth", progress=False)
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


# --- the cache of zoo entries ------------------------------------------------------------------------

def test_corrupted_download_is_refused_and_the_cache_unchanged(server, cache, monkeypatch):
    good = add_entry(monkeypatch, server, "vit_micro.good")
    dl.download_weights(good, progress=False)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    server.files["/bad.pth"] = DATA[:-1] + bytes([DATA[-1] ^ 1])
    bad = add_entry(monkeypatch, server, "vit_micro.bad", sha256=DIGEST, path="/bad.pth")
    with pytest.raises(dl.ChecksumError) as info:
        dl.download_weights(bad, progress=False)
    assert f"expected {DIGEST}" in str(info.value) and hashlib.sha256(server.files["/bad.pth"]).hexdigest() in str(
        info.value)
    after = {p.name: p.read_bytes() for p in cache.iterdir() if not p.name.endswith(".lock")}
    assert after == {k: v for k, v in before.items() if not k.endswith(".lock")}


def test_unknown_hash_is_recorded_then_checked(server, cache, monkeypatch):
    entry = add_entry(monkeypatch, server)
    path = dl.download_weights(entry, progress=False)
    record = json.loads((cache / "hashes.json").read_text())["hashes"][entry.name]
    assert record == {"sha256": DIGEST, "size": len(DATA), "url": entry.url}
    assert dl.cached_weights(entry.name) == path
    path.write_bytes(DATA[::-1])  # the file changes behind the cache's back
    with pytest.raises(dl.ChecksumError, match=rf"expected {DIGEST}.*vitlab weights download {entry.name}"):
        dl.cached_weights(entry.name)
    path.unlink()  # a new download must match the recorded hash too
    server.files["/w.pth"] = DATA[::-1]
    with pytest.raises(dl.ChecksumError, match="nothing in the cache changed"):
        dl.download_weights(entry, progress=False)
    assert not path.exists()


def test_cache_hit_needs_no_server(server, cache, monkeypatch):
    entry = add_entry(monkeypatch, server, sha256=DIGEST)
    path = dl.cached_weights(entry.name, download=True, progress=False)
    server.stop()
    assert dl.cached_weights(entry.name) == path == dl.download_weights(entry.name)
    assert dl.cache_state(entry) == "cached" and path.read_bytes() == DATA


def test_missing_weights_name_the_command_and_url(server, cache, monkeypatch):
    entry = add_entry(monkeypatch, server)
    with pytest.raises(dl.WeightsNotCached) as info:
        dl.cached_weights(entry.name)
    assert f"`vitlab weights download {entry.name}`" in str(info.value) and entry.url in str(info.value)
    manual = add_entry(monkeypatch, server, "vit_micro.drive", direct=False)
    with pytest.raises(dl.WeightsNotCached, match=r"vitlab weights add vit_micro\.drive FILE"):
        dl.cached_weights(manual.name, download=True)
    assert server.requests == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VITLAB_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dl.cache_dir() == tmp_path / "vitlab" / "weights"
    monkeypatch.setenv("VITLAB_HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home"


# --- the command line --------------------------------------------------------------------------------

def test_cli_download_path_list_verify_round_trip(server, cache, monkeypatch, capsys):
    entry = add_entry(monkeypatch, server)
    assert cli_main.main(["weights", "path", entry.name]) == 2
    assert f"vitlab weights download {entry.name}" in capsys.readouterr().err
    assert cli_main.main(["weights", "download", "vit_micro.te*", "--quiet"]) == 0
    out = capsys.readouterr().out
    path = cache / entry.filename
    assert f"{entry.name}  {path}  sha256 {DIGEST}" in out and path.read_bytes() == DATA
    assert cli_main.main(["weights", "path", entry.name]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert cli_main.main(["weights", "list", "vit_micro.*", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["cache"]) for r in listed["entries"]] == [(entry.name, "cached")]
    assert cli_main.main(["weights", "verify"]) == 0
    assert re.search(rf"{re.escape(entry.name)}\s+ok\s+first download\s+{DIGEST}", capsys.readouterr().out)
    path.write_bytes(b"damaged")
    assert cli_main.main(["weights", "verify"]) == 2
    assert "1 of 1 cached files failed verification" in capsys.readouterr().err


def test_cli_add_puts_a_hand_fetched_file_in_the_cache(server, cache, monkeypatch, capsys, tmp_path):
    entry = add_entry(monkeypatch, server, "vit_micro.drive", sha256=DIGEST, direct=False)
    assert cli_main.main(["weights", "download", entry.name]) == 2
    assert "vitlab weights add vit_micro.drive FILE" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(b"not it")
    assert cli_main.main(["weights", "add", entry.name, str(wrong)]) == 2
    assert f"expected {DIGEST}" in capsys.readouterr().err and not (cache / entry.filename).exists()
    fetched = tmp_path / "fetched.pth"
    fetched.write_bytes(DATA)
    assert cli_main.main(["weights", "add", entry.name, str(fetched)]) == 0
    assert (cache / entry.filename).read_bytes() == DATA and fetched.exists()
    assert server.requests == []


def test_cli_models_zoo_table(capsys):
    assert cli_main.main(["models", "--zoo", "volo_d1*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "model", "input", "crop", "result", "source"]
    assert lines[1].split() == ["volo_d1.in1k", "volo_d1", "224", "0.96", "top-1", "84.2", "github.com"]
    assert cli_main.main(["models", "--zoo", "segvit_vit_base*", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["results"] == {"mIoU": 51.3, "mIoU MS": 53.0} and row["host"] == "huggingface.co"


# --- the table ---------------------------------------------------------------------------------------

def test_zoo_table_is_consistent():
    registered = {r["name"] for r in json.loads(INDEX.read_text())["models"]}
    names = [e.name for e in zoo.ZOO]
    assert len(names) == len(set(names))
    for e in zoo.ZOO:
        assert e.name.split(".")[0] == e.model and e.model in registered, e.name
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert e.url.startswith("https://") and e.source.startswith("https://github.com/"), e.name
        assert e.direct == (e.host != "drive.google.com"), e.name
        assert e.results and all(0 < v < 100 for _, v in e.results), e.name
    assert zoo.zoo_entry("volo_d1").name == "volo_d1.in1k" == zoo.pretrained_entry("volo_d1").name
    assert zoo.zoo_entry("segvit_vit_large.ade20k").download_url.endswith("/resolve/main/ade_54.6.pth")
    assert "sig=" in zoo.zoo_entry("swin_tiny.esvit_in1k").download_url
    assert zoo.zoo_names("uniformer_video_base")[0] == "uniformer_video_base.k400_16x4"


def test_unknown_names_suggest_close_ones():
    with pytest.raises(zoo.UnknownWeightsError, match=r"Closest names: volo_d1\.in1k"):
        zoo.zoo_entry("volo_d1.in21k")
    with pytest.raises(KeyError, match="no official Pale Transformer checkpoints"):
        zoo.zoo_entry("pale_tiny")


def test_listing_imports_no_torch(tmp_path):
    import subprocess
    import sys
    code = ("import sys\nfrom vitlab.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    for argv in (["weights", "list"], ["models", "--zoo"], ["weights", "--help"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "VITLAB_HOME": str(tmp_path)})
        assert done.stderr.strip().endswith("False"), (argv, done.stderr)


def test_create_model_pretrained_true_reads_the_cache_and_never_downloads(server, cache, monkeypatch, tmp_path):
    """pretrained=True (or the weight's name) loads the verified cached file; absent, the error names the command."""
    import torch

    import vitlab
    from vitlab.checkpoints.download import add_weights
    from vitlab.errors import VitlabError
    entry = add_entry(monkeypatch, server, "vit_micro.cached", path="/never-served.pth")
    with pytest.raises(VitlabError, match=r"vitlab weights download vit_micro\.cached"):
        vitlab.create_model("vit_micro", pretrained=True)
    assert [r for r in server.requests if r[0] == "/never-served.pth"] == []   # nothing fetched at build time
    source = vitlab.create_model("vit_micro")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "hand.pth")
    add_weights(entry, tmp_path / "hand.pth")
    for pretrained in (True, "vit_micro.cached"):
        model = vitlab.create_model("vit_micro", pretrained=pretrained)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="are for vit_micro, not volo_micro"):
        vitlab.create_model("volo_micro", pretrained="vit_micro.cached")


def test_the_loopback_example_runs():
    """examples/weights_loopback.py (shown in the README): cut-off download, resume, verify, pretrained=True."""
    import subprocess
    import sys
    example = Path(__file__).resolve().parents[1] / "examples" / "weights_loopback.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr                 # errors and progress go to stderr
    assert "the partial file is kept for resuming" in text and "resuming at 0.5 MiB" in text
    assert "weights equal to the served ones: True" in out.stdout
