"""Tests of monai_im.datasets.archives: checksums, resumable downloads (loopback server), safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import shutil
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from monai_im.datasets import extract
from monai_im.datasets.archives import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_SIZE,
    RATIO_MIN_SIZE,
    ArchiveError,
    ArchiveLimitError,
    ChecksumError,
    DownloadError,
    ExtractionLimits,
    NotEnoughSpaceError,
    UnsafeArchiveError,
    check_archive,
    check_free_space,
    download,
    format_size,
    parse_checksum_overrides,
    parse_size,
    read_checksums,
    record_checksum,
    safe_extract,
    sha256sum,
    verify_sha256,
)

PAYLOAD = bytes(range(256)) * 97 + b"tail"  # 24836 bytes, not a multiple of the chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# --------------------------------------------------------------------------- a loopback HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    state: dict = {}

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        st = self.state
        st["requests"].append((self.path, self.headers.get("Range")))
        if self.path.endswith("/missing.bin"):
            self.send_error(404, "not here")
            return
        if self.path.endswith("/page.zip"):
            body = b"<html><body>please confirm</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = st["payload"]
        start = 0
        rng = self.headers.get("Range")
        if rng and st.get("honour_range", True):
            start = int(re.match(r"bytes=(\d+)-$", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = st.get("cut")
        self.wfile.write(body[:cut] if cut is not None else body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture()
def server():
    state = {"requests": [], "payload": PAYLOAD}
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- checksums


def test_sha256sum_and_verify(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(PAYLOAD)
    assert sha256sum(f) == PAYLOAD_SHA
    assert verify_sha256(f, PAYLOAD_SHA.upper()) == PAYLOAD_SHA
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as e:
        verify_sha256(f, wrong)
    msg = str(e.value)
    assert str(f) in msg and wrong in msg and PAYLOAD_SHA in msg
    assert f.read_bytes() == PAYLOAD  # the user's file is left alone
    with pytest.raises(FileNotFoundError):
        verify_sha256(tmp_path / "nope.bin", wrong)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        verify_sha256(f, "abc")


def test_checksum_file_roundtrip(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    assert read_checksums(sums) == {}
    record_checksum(sums, "b.zip", "B" * 64)
    record_checksum(sums, "a.zip", "a" * 64)
    record_checksum(sums, "b.zip", "c" * 64)  # update in place
    assert read_checksums(sums) == {"a.zip": "a" * 64, "b.zip": "c" * 64}
    sums.write_text(f"# comment\n{'d' * 64} *dir/x.zip\n\n", encoding="utf-8")
    assert read_checksums(sums) == {"x.zip": "d" * 64}
    sums.write_text("not a checksum line\n", encoding="utf-8")
    with pytest.raises(ValueError, match="SHA256SUMS:1"):
        read_checksums(sums)


def test_parse_checksum_overrides():
    assert parse_checksum_overrides([f"a.zip={'A' * 64}"]) == {"a.zip": "a" * 64}
    with pytest.raises(ValueError, match="NAME=SHA256HEX"):
        parse_checksum_overrides(["a.zip"])
    with pytest.raises(ValueError, match="a.zip"):
        parse_checksum_overrides(["a.zip=123"])


# --------------------------------------------------------------------------- download


def test_download_full_with_hash(server, tmp_path):
    url, state = server
    dest = download(f"{url}/file.bin", tmp_path / "sub" / "file.bin", sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "file.bin.part").exists()
    assert state["requests"] == [("/file.bin", None)]
    # an existing file is verified, not downloaded again
    download(f"{url}/file.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert len(state["requests"]) == 1


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    url, state = server
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    part.write_bytes(PAYLOAD[:10000])  # an earlier, interrupted run
    download(f"{url}/file.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert state["requests"] == [("/file.bin", "bytes=10000-")]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_download_interrupted_keeps_part_then_resumes(server, tmp_path):
    url, state = server
    dest = tmp_path / "file.bin"
    state["cut"] = 5000
    with pytest.raises(DownloadError, match="run again to resume"):
        download(f"{url}/file.bin", dest, sha256=PAYLOAD_SHA, progress=False, retries=0)
    part = tmp_path / "file.bin.part"
    assert part.read_bytes() == PAYLOAD[:5000] and not dest.exists()
    state["cut"] = None
    download(f"{url}/file.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert state["requests"][-1] == ("/file.bin", "bytes=5000-")
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_download_retries_automatically(server, tmp_path):
    url, state = server
    state["cut"] = 20000  # the first answer stops early; the automatic retry asks for the rest
    dest = download(f"{url}/file.bin", tmp_path / "file.bin", sha256=PAYLOAD_SHA, progress=False, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert state["requests"][:2] == [("/file.bin", None), ("/file.bin", "bytes=20000-")]


def test_download_server_ignoring_range_starts_over(server, tmp_path):
    url, state = server
    state["honour_range"] = False
    part = tmp_path / "file.bin.part"
    part.write_bytes(b"stale bytes of something else")
    download(f"{url}/file.bin", tmp_path / "file.bin", sha256=PAYLOAD_SHA, progress=False)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_download_part_already_complete(server, tmp_path):
    url, state = server
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    download(f"{url}/file.bin", tmp_path / "file.bin", sha256=PAYLOAD_SHA, progress=False)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert state["requests"] == [("/file.bin", f"bytes={len(PAYLOAD)}-")]


def test_download_wrong_hash_removes_only_the_bad_download(server, tmp_path):
    url, _ = server
    dest = tmp_path / "file.bin"
    keep = tmp_path / "other.txt"
    keep.write_text("mine")
    wrong = "f" * 64
    with pytest.raises(ChecksumError) as e:
        download(f"{url}/file.bin", dest, sha256=wrong, progress=False)
    assert str(dest) in str(e.value) and wrong in str(e.value) and PAYLOAD_SHA in str(e.value)
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()
    assert keep.read_text() == "mine"


def test_download_existing_user_file_with_wrong_hash_is_kept(server, tmp_path):
    url, state = server
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"the user's own copy")
    with pytest.raises(ChecksumError, match="file.bin"):
        download(f"{url}/file.bin", dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == b"the user's own copy"
    assert state["requests"] == []


def test_download_errors(server, tmp_path):
    url, _ = server
    with pytest.raises(DownloadError, match="404"):
        download(f"{url}/missing.bin", tmp_path / "missing.bin", progress=False)
    with pytest.raises(DownloadError, match="HTML page"):
        download(f"{url}/page.zip", tmp_path / "page.zip", progress=False)
    assert not (tmp_path / "page.zip").exists()
    with pytest.raises(ValueError, match="http"):
        download("ftp://127.0.0.1/x.zip", tmp_path / "x.zip", progress=False)


# --------------------------------------------------------------------------- extraction


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    data = data or {}
    with tarfile.open(path, "w:gz") as tf:
        for info in members:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def test_safe_extract_zip(tmp_path):
    archive = _zip(tmp_path / "ok.zip", {"top/a.txt": b"a", "top/sub/b.txt": b"b", "top/empty/": b""})
    files = safe_extract(archive, tmp_path / "out", progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["top/a.txt", "top/sub/b.txt"]
    assert (tmp_path / "out" / "top" / "sub" / "b.txt").read_bytes() == b"b"
    assert (tmp_path / "out" / "top" / "empty").is_dir()


def test_safe_extract_tar(tmp_path):
    archive = _tar(
        tmp_path / "ok.tar.gz",
        [tarfile.TarInfo("d/a.txt"), tarfile.TarInfo("d/b.bin")],
        {"d/a.txt": b"hello", "d/b.bin": PAYLOAD},
    )
    files = safe_extract(archive, tmp_path / "out", progress=False)
    assert sorted(p.name for p in files) == ["a.txt", "b.bin"]
    assert (tmp_path / "out" / "d" / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "d" / "b.bin").read_bytes() == PAYLOAD
    contents = check_archive(archive)
    assert contents.kind == "tar" and contents.names == ("d/a.txt", "d/b.bin")
    assert contents.total_size == 5 + len(PAYLOAD)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_safe_extract_tar_refuses_links_even_inside(tmp_path, kind):
    archive = _tar(
        tmp_path / "l.tar.gz",
        [tarfile.TarInfo("d/a.txt"), _link("d/link.txt", "a.txt", kind)],
        {"d/a.txt": b"x"},
    )
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract(archive, dest, progress=False)
    assert str(archive) in str(e.value) and "'d/link.txt'" in str(e.value) and "link" in str(e.value)
    assert "\n" not in str(e.value)
    assert not dest.exists()


@pytest.mark.parametrize(
    "bad", ["../evil.txt", "/abs.txt", "ok/../../evil.txt", "..\\evil.txt", "C:/evil.txt"]
)
def test_safe_extract_zip_refuses_unsafe_members_before_writing(tmp_path, bad):
    archive = _zip(tmp_path / "bad.zip", {"good.txt": b"first member, must not be written", bad: b"x"})
    dest = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract(archive, dest, progress=False)
    assert str(archive) in str(e.value) and repr(bad) in str(e.value)
    assert not dest.exists()  # nothing written, not even the safe member before it
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    with pytest.raises(UnsafeArchiveError):
        check_archive(archive)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil.txt"),
        tarfile.TarInfo("/abs.txt"),
        _link("d/link", "../../outside"),
        _link("link", "/etc/passwd"),
        _link("hard", "../outside", tarfile.LNKTYPE),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_safe_extract_tar_refuses_unsafe_members(tmp_path, member):
    good = tarfile.TarInfo("good.txt")
    archive = _tar(
        tmp_path / "bad.tar.gz", [good, member], {"good.txt": b"g", "../evil.txt": b"e", "/abs.txt": b"a"}
    )
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract(archive, dest, progress=False)
    assert str(archive) in str(e.value) and repr(member.name) in str(e.value)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()


def test_safe_extract_tar_refuses_device_files(tmp_path):
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(tmp_path / "fifo.tar.gz", [fifo])
    with pytest.raises(UnsafeArchiveError, match="FIFO"):
        safe_extract(archive, tmp_path / "out", progress=False)


def test_safe_extract_not_an_archive(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArchiveError, match="junk.zip"):
        safe_extract(junk, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError):
        safe_extract(tmp_path / "nope.zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_safe_extract_corrupt_member(tmp_path):
    archive = _zip(tmp_path / "c.zip", {"a.txt": b"A" * 5000})
    raw = bytearray(archive.read_bytes())
    pos = raw.find(b"A" * 100)
    raw[pos : pos + 10] = b"B" * 10  # stored data no longer matches its CRC
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="c.zip"):
        safe_extract(archive, tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- bounded extraction


def _zip_bomb(path: Path, size: int = 20 * 1024 * 1024) -> Path:
    """``size`` bytes of zeros deflated to about ``size / 1000`` bytes, after a harmless member."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("readme.txt", b"first member, must not be written")
        with zf.open("zeros.bin", "w") as f:
            chunk = bytes(1024 * 1024)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    return path


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def test_zip_bomb_is_refused_by_its_ratio_before_writing(tmp_path):
    archive = _zip_bomb(tmp_path / "bomb.zip")
    assert archive.stat().st_size < 100_000  # really a bomb: 20 MiB in well under 100 kB
    dest = tmp_path / "out"
    with pytest.raises(ArchiveLimitError) as e:
        safe_extract(archive, dest, progress=False)  # default limits
    msg = str(e.value)
    assert str(archive) in msg and "'zeros.bin'" in msg and "ratio" in msg and "\n" not in msg
    assert not dest.exists()
    dest.mkdir()  # an existing target stays empty
    with pytest.raises(ArchiveLimitError):
        safe_extract(archive, dest, progress=False)
    assert _tree(dest) == []


def test_total_size_limit_is_checked_before_writing(tmp_path):
    archive = _zip(tmp_path / "big.zip", {"a.bin": PAYLOAD, "b.bin": PAYLOAD, "c.bin": PAYLOAD})
    dest = tmp_path / "out"
    limits = ExtractionLimits(max_total_size=2 * len(PAYLOAD) + 10, max_ratio=None)
    with pytest.raises(ArchiveLimitError) as e:
        safe_extract(archive, dest, progress=False, limits=limits)
    assert str(archive) in str(e.value) and "'c.bin'" in str(e.value) and "limit" in str(e.value)
    assert not dest.exists()
    # the same archive within a limit that fits it
    files = safe_extract(
        archive, dest, progress=False, limits=ExtractionLimits(max_total_size=3 * len(PAYLOAD))
    )
    assert len(files) == 3 and (dest / "c.bin").read_bytes() == PAYLOAD


def test_zip_bomb_refused_by_a_low_size_limit_and_limits_can_be_switched_off(tmp_path):
    archive = _zip_bomb(tmp_path / "bomb.zip", size=4 * 1024 * 1024)
    with pytest.raises(ArchiveLimitError, match="unpacks to more than the limit of 1.0 MiB"):
        check_archive(archive, ExtractionLimits(max_total_size=1024 * 1024, max_ratio=None))
    files = safe_extract(archive, tmp_path / "out", progress=False, limits=ExtractionLimits(None, None))
    assert sorted(p.name for p in files) == ["readme.txt", "zeros.bin"]
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 4 * 1024 * 1024


def test_tar_bomb_is_refused_by_the_overall_ratio(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 8 * 1024 * 1024
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ArchiveLimitError) as e:
        safe_extract(archive, tmp_path / "out", progress=False)
    assert str(archive) in str(e.value) and "any of its 1 members" in str(e.value) and "ratio" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_many_small_members_are_refused_by_the_overall_ratio(tmp_path):
    with zipfile.ZipFile(tmp_path / "many.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):  # each below the per-member floor, together far above it
            zf.writestr(f"z{i:02d}.bin", bytes(RATIO_MIN_SIZE // 2))
    with pytest.raises(ArchiveLimitError, match="any of its 40 members"):
        safe_extract(tmp_path / "many.zip", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unsupported_zip_method_is_reported_before_writing(tmp_path):
    archive = _zip(tmp_path / "d64.zip", {"a.txt": b"a", "b.txt": b"b"})
    raw = bytearray(archive.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the central directory entry of b.txt: method at offset 10
    raw[central + 10 : central + 12] = (9).to_bytes(2, "little")  # Deflate64, which zipfile cannot read
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="'b.txt'.*compression method 9"):
        safe_extract(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_images_like_data_pass_the_default_limits(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 3 * 1024 * 1024, dtype=np.uint8).tobytes()  # incompressible, like JPEG
    with zipfile.ZipFile(tmp_path / "img.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("img/a.jpg", noise)
        zf.writestr("img/notes.txt", b" " * 100_000)  # small and very compressible: below the ratio floor
    files = safe_extract(tmp_path / "img.zip", tmp_path / "out", progress=False)
    assert len(files) == 2 and (tmp_path / "out" / "img" / "a.jpg").read_bytes() == noise


def test_zip_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", b"g")
        info = zipfile.ZipInfo("data/link")
        info.create_system = 3  # unix
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as e:
        safe_extract(archive, dest, progress=False)
    msg = str(e.value)
    assert str(archive) in msg and "'data/link'" in msg and "symbolic link" in msg
    assert not dest.exists()


def test_member_inflating_beyond_its_declared_size_is_stopped_and_removed(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "lie.zip", {"a.txt": b"a" * 100, "b.txt": b"b" * 100})
    real_open = zipfile.ZipFile.open

    def lying_open(self, member, *args, **kwargs):
        name = member.filename if isinstance(member, zipfile.ZipInfo) else member
        if name == "b.txt":  # the stream yields far more than the header declares
            return io.BytesIO(b"b" * (5 * 1024 * 1024))
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("the user's")
    with pytest.raises(ArchiveLimitError) as e:
        safe_extract(archive, dest, progress=False)
    assert str(archive) in str(e.value) and "'b.txt'" in str(e.value) and "declared size" in str(e.value)
    assert _tree(dest) == ["mine.txt"]  # a.txt and the partial b.txt were removed, the user's file kept


def test_free_space_is_checked_first(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "ok.zip", {"a.bin": PAYLOAD})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda path: usage._replace(free=len(PAYLOAD) - 1))
    dest = tmp_path / "new" / "out"
    with pytest.raises(NotEnoughSpaceError) as e:
        safe_extract(archive, dest, progress=False)
    assert str(archive) in str(e.value) and "free" in str(e.value) and str(dest) in str(e.value)
    assert not (tmp_path / "new").exists()
    check_free_space(dest, len(PAYLOAD) - 1, "x")  # exactly what is free: fine


def test_limits_and_sizes():
    with pytest.raises(ValueError, match="max_total_size"):
        ExtractionLimits(max_total_size=0)
    with pytest.raises(ValueError, match="max_ratio"):
        ExtractionLimits(max_ratio=0.5)
    assert DEFAULT_MAX_TOTAL_SIZE > 11e9 * 4 and DEFAULT_MAX_RATIO >= 10  # well above the real datasets
    assert parse_size("64G") == 64 * 1024**3
    assert parse_size("500MiB") == 500 * 1024**2
    assert parse_size("1.5k") == 1536
    assert parse_size("1000") == 1000
    for bad in ("", "-1G", "0", "12Q", "G"):
        with pytest.raises(ValueError, match="positive size"):
            parse_size(bad)
    assert format_size(512) == "512 B" and format_size(10.4 * 1024**3) == "10.4 GiB"
