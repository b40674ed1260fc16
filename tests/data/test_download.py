import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from monai_contreg.cli import main
from monai_contreg.data.download import DATASETS, DatasetSource, download_file, extract_archive, fetch_dataset


def _archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("NLST/NLST_dataset.json", '{"name": "NLST", "registration_val": []}')
        zf.writestr("NLST/imagesTr/NLST_0001_0000.nii.gz", b"x" * 5000)
    return buf.getvalue()


class _Server:
    """Loopback HTTP server for one payload, honouring Range requests unless told not to."""

    def __init__(self, payload: bytes, ranges: bool = True):
        self.payload, self.ranges, self.requests = payload, ranges, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if (rng and outer.ranges) else 0
                body = outer.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/NLST2023.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server(_archive())
    yield srv
    srv.close()


def test_download_resumes_and_verifies(server, tmp_path):
    data = server.payload
    digest = hashlib.sha256(data).hexdigest()
    dest = tmp_path / "NLST2023.zip"
    (tmp_path / "NLST2023.zip.part").write_bytes(data[:1000])  # an interrupted transfer
    assert download_file(server.url, dest, digest) == dest
    assert dest.read_bytes() == data and server.requests == ["bytes=1000-"]
    assert not (tmp_path / "NLST2023.zip.part").exists()
    download_file(server.url, dest, digest)  # complete and verified: no request
    assert len(server.requests) == 1


def test_download_restarts_when_range_is_ignored_and_rejects_bad_checksum(server, tmp_path):
    server.ranges = False
    (tmp_path / "a.zip.part").write_bytes(b"garbage")
    download_file(server.url, tmp_path / "a.zip")
    assert (tmp_path / "a.zip").read_bytes() == server.payload
    with pytest.raises(ValueError, match="download_file: checksum of .* expected 0+; the download was deleted"):
        download_file(server.url, tmp_path / "b.zip", "0" * 64)
    assert not (tmp_path / "b.zip").exists() and not (tmp_path / "b.zip.part").exists()


def test_fetch_and_extract(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(DATASETS, "nlst", DatasetSource(server.url, "NLST2023.zip", hashlib.sha256(server.payload).hexdigest()))
    out = fetch_dataset("nlst", tmp_path / "data")
    assert (out / "NLST" / "NLST_dataset.json").is_file() and (out / "NLST" / "imagesTr" / "NLST_0001_0000.nii.gz").is_file()
    assert extract_archive(tmp_path / "data" / "NLST2023.zip", out) == out  # marker: not extracted again
    with pytest.raises(ValueError, match="unknown dataset 'nlts'.*Did you mean 'nlst'"):
        fetch_dataset("nlts", tmp_path)
    assert main(["download", "nlst", str(tmp_path / "cli")]) == 0
    assert "nlst:" in capsys.readouterr().out and (tmp_path / "cli" / "NLST" / "NLST_dataset.json").is_file()
    assert main(["download", "nlst", str(tmp_path / "x"), "--url", "http://127.0.0.1:9/none.zip"]) == 1
    assert "run the same command again to resume" in capsys.readouterr().err


def test_extract_refuses_paths_outside(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ValueError, match="would be written outside"):
        extract_archive(evil, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
