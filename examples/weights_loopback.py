"""`vitlab weights` end to end against a file server on 127.0.0.1 (nothing leaves the machine).

A micro model's checkpoint is served with HTTP Range support; a zoo entry pointing at it is added for
this process only. The first download is cut off half-way (the server closes the connection), the
second resumes from the partial file, the hash is recorded, `verify` checks it and
``create_model(..., pretrained=True)`` loads the cached file.

    python examples/weights_loopback.py
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(body: bytes, cut_first_at: int | None):
    """A server for one file at /w.pth; the first response stops after ``cut_first_at`` bytes."""
    state = {"cut": cut_first_at}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
            start = int(match.group(1)) if match else 0
            self.send_response(206 if match else 200)
            if match:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if state["cut"] is not None:
                payload, state["cut"] = payload[:state["cut"]], None
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> None:
    import torch

    import vitlab
    from vitlab.checkpoints import zoo
    from vitlab.cli.main import main as cli

    work = Path(tempfile.mkdtemp(prefix="vitlab-weights-"))
    os.environ["VITLAB_HOME"] = str(work / "cache")
    model = vitlab.create_model("vit_micro")
    torch.save({"state_dict": model.state_dict()}, work / "w.pth")
    body = (work / "w.pth").read_bytes()
    httpd = serve(body, cut_first_at=len(body) // 2)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/w.pth"
    entry = zoo.ZooEntry("vit_micro.loopback", "vit_micro", url, "this example", "random weights",
                         (("top-1", 0.0),), 64, 1.0)
    zoo.ZOO = (*zoo.ZOO, entry)
    for argv in (["weights", "download", entry.name], ["weights", "download", entry.name],
                 ["weights", "verify"], ["weights", "path", entry.name]):
        print("$ vitlab " + " ".join(argv))
        print(f"(exit {cli(argv)})")
    loaded = vitlab.create_model("vit_micro", pretrained=True)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    print(f"create_model('vit_micro', pretrained=True): weights equal to the served ones: {same}")
    httpd.shutdown()


if __name__ == "__main__":
    main()
