"""Download a manifest into the data dir: in parallel, resumable, retried, and checked.

Guarantees, because compute nodes have no internet and a bad file found there costs a queued job:
- A file under its final name is always complete and checked: bytes go to `<file>.part`, are verified
  (size, sha256), then renamed with os.replace.
- An interrupted download resumes: the next attempt (or the next `nanoforge stage`) asks for the rest with
  `Range: bytes=<.part size>-`. A server that ignores Range (answers 200) is handled by starting over.
- Connection errors, timeouts and 5xx/429 answers are retried with exponential backoff; 4xx are not.
- The first time a file is fetched its size and sha256 go into `<data_dir>/staging.lock.json`. Later runs
  check files already present against the lock (a damaged file is fetched again) and check fresh downloads
  against it (a file that changed upstream is an error naming it, never silently accepted).
- A zip is unpacked into a temporary folder that is then renamed into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from nanoforge.data.manifest import Asset
from nanoforge.errors import UserError

LOCK_NAME = "staging.lock.json"
CHUNK = 1 << 20
UNPACKED_MARKER = ".nanoforge-source.sha256"  # inside an unpacked folder: the sha256 of the zip it came from


class StagingError(UserError):
    """Some files could not be fetched or failed their checks; what was fetched stays, `.part` files resume."""

    exit_code = 1


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Lock file


class StagingLock:
    """`staging.lock.json`: {"version": 1, "files": {<path relative to data dir>: {url, size, sha256}}}."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._mutex = threading.Lock()
        self.files: dict[str, dict] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                self.files = dict(data["files"])
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{self.path} is not a valid staging lock; fix or delete it (files are then re-checked and "
                    "their checksums recorded again)"
                ) from None

    def get(self, rel: str) -> dict | None:
        with self._mutex:
            entry = self.files.get(rel)
            return dict(entry) if entry else None

    def record(self, rel: str, url: str, size: int, sha256: str) -> None:
        with self._mutex:
            self.files[rel] = {"url": url, "size": size, "sha256": sha256}
            tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"version": 1, "files": dict(sorted(self.files.items()))}, indent=1) + "\n")
            os.replace(tmp, self.path)


@contextlib.contextmanager
def _exclusive(data_dir: Path):
    """One `nanoforge stage` per data dir at a time: two would write the same .part files."""
    path = data_dir / ".staging.running"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise StagingError(f"another `nanoforge stage` (pid {handle.read().strip() or '?'}) is staging into "
                               f"{data_dir}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# Checks


def sha256_file(path: Path, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            digest.update(chunk)
    return digest.hexdigest()


def expected_of(asset: Asset, lock_entry: dict | None) -> tuple[int | None, str | None]:
    """The size and sha256 a file must have: the manifest's, else the lock's, else unknown."""
    size = asset.size if asset.size is not None else (lock_entry or {}).get("size")
    sha = asset.sha256 or (lock_entry or {}).get("sha256")
    return size, sha


def check_file(path: Path, size: int | None, sha: str | None, stop=None) -> tuple[str | None, int, str]:
    """(problem or None, actual size, actual sha256)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} != expected {size}", actual_size, ""
    actual_sha = sha256_file(path, stop)
    if sha is not None and actual_sha != sha:
        return f"sha256 {actual_sha[:12]}... != expected {sha[:12]}...", actual_size, actual_sha
    return None, actual_size, actual_sha


# ---------------------------------------------------------------------------------------------------------------
# HTTP


def _opener_for(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    # A site proxy in the environment must not capture a mirror on this machine.
    handlers = [urllib.request.ProxyHandler({})] if loopback else []
    return urllib.request.build_opener(*handlers)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass
class _Download:
    """One file's transfer state across attempts."""

    asset: Asset
    part: Path
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    hashed: int = 0  # bytes of .part folded into `hasher`
    total: int | None = None  # full size, once a server told us
    resumed_from: int = 0  # .part size when this run started on it
    total_counted: bool = False  # whether `total` was added to the progress bar


class Stager:
    def __init__(self, data_dir: Path, jobs: int = 8, retries: int = 6, backoff: float = 0.5,
                 timeout: float = 60.0, progress: bool = True):
        self.data_dir = Path(data_dir)
        self.jobs = jobs
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.progress = progress
        self.lock = StagingLock(self.data_dir)
        self.stop = threading.Event()
        self._bar = None
        self._bar_mutex = threading.Lock()
        self.bytes_downloaded = 0
        self.notes: list[str] = []

    # -- progress ---------------------------------------------------------------------------------------------
    def _advance(self, n: int, downloaded: bool = True) -> None:
        with self._bar_mutex:
            if downloaded:
                self.bytes_downloaded += n
            if self._bar is not None:
                self._bar.update(n)

    def _grow_total(self, n: int) -> None:
        with self._bar_mutex:
            if self._bar is not None:
                self._bar.total = (self._bar.total or 0) + n
                self._bar.refresh()

    def _note(self, message: str) -> None:
        with self._bar_mutex:
            self.notes.append(message)
            if self._bar is not None:
                self._bar.write(message)
            else:
                print(message, flush=True)

    # -- one file ---------------------------------------------------------------------------------------------
    def _attempt(self, url: str, dl: _Download) -> None:
        """One HTTP request continuing `.part`; raises _Retryable/_Fatal, returns when the body is complete."""
        offset = dl.part.stat().st_size if dl.part.exists() else 0
        if dl.hashed != offset:  # (re)build the running hash from what is on disk
            dl.hasher, dl.hashed = hashlib.sha256(), 0
            if offset:
                with open(dl.part, "rb") as f:
                    while chunk := f.read(CHUNK):
                        dl.hasher.update(chunk)
                dl.hashed = offset
        if dl.total is not None and offset == dl.total:
            return
        headers = {"User-Agent": "nanoforge-stage", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = _opener_for(url).open(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                match = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") or "")
                if match and int(match.group(1)) == offset:
                    dl.total = offset  # the .part already holds everything
                    return
                dl.part.unlink(missing_ok=True)
                raise _Retryable(f"HTTP 416 for a resume at byte {offset}; starting over") from None
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Retryable(f"HTTP {exc.code}") from None
            raise _Fatal(f"HTTP {exc.code} {exc.reason} for {url}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retryable(f"connection failed: {reason}") from None

        with response:
            status = response.status
            length = response.headers.get("Content-Length")
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != offset:
                    dl.part.unlink(missing_ok=True)
                    raise _Retryable("server answered a different byte range; starting over")
                if match.group(3) != "*":
                    dl.total = int(match.group(3))
                mode = "ab"
            elif status == 200:
                if offset:
                    # The server ignored Range: what we hold is worthless for this response; start over.
                    self._advance(-offset, downloaded=False)
                    dl.hasher, dl.hashed, offset = hashlib.sha256(), 0, 0
                dl.total = int(length) if length is not None else None
                mode = "wb"
            else:
                raise _Fatal(f"unexpected HTTP {status} for {url}")
            if not dl.total_counted and dl.total is not None:
                self._grow_total(dl.total)
                dl.total_counted = True
            with open(dl.part, mode) as out:
                try:
                    while True:
                        if self.stop.is_set():
                            raise KeyboardInterrupt
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        dl.hasher.update(chunk)
                        dl.hashed += len(chunk)
                        self._advance(len(chunk))
                except (OSError, http.client.HTTPException) as exc:  # IncompleteRead, reset, timeout mid-body
                    out.flush()
                    raise _Retryable(f"transfer interrupted after {dl.hashed} bytes: {exc!r}") from None
            if dl.total is not None and dl.hashed != dl.total:
                raise _Retryable(f"transfer ended at {dl.hashed} of {dl.total} bytes")
            if dl.total is None:
                dl.total = dl.hashed

    def _download(self, asset: Asset, final: Path, expect_size: int | None) -> _Download:
        """Fetch `asset` into `<final>.part` with retries; returns the finished transfer (size, hash)."""
        dl = _Download(asset=asset, part=final.with_name(final.name + ".part"))
        final.parent.mkdir(parents=True, exist_ok=True)
        if dl.part.exists():
            dl.resumed_from = dl.part.stat().st_size
            if expect_size is not None and dl.resumed_from > expect_size:
                dl.part.unlink()
                dl.resumed_from = 0
            self._advance(dl.resumed_from, downloaded=False)
        if expect_size is not None:
            self._grow_total(expect_size)
            dl.total_counted = True
        failures = 0
        while True:
            before = dl.part.stat().st_size if dl.part.exists() else 0
            try:
                self._attempt(asset.url, dl)
                return dl
            except _Retryable as exc:
                after = dl.part.stat().st_size if dl.part.exists() else 0
                failures = 0 if after > before else failures + 1  # a retry that made progress resets the count
                if failures > self.retries:
                    raise _Fatal(f"{exc} (gave up after {self.retries} retries)") from None
                delay = min(30.0, self.backoff * 2 ** max(failures - 1, 0)) * (1 + 0.25 * random.random())
                self._note(f"retry {asset.download_path}: {exc}; again in {delay:.1f}s")
                if self.stop.wait(delay):
                    raise KeyboardInterrupt from None

    def _unpack(self, asset: Asset, archive: Path, archive_sha: str) -> None:
        dest = self.data_dir / asset.dest
        marker = dest / UNPACKED_MARKER
        if marker.exists() and marker.read_text().strip() == archive_sha:
            return
        tmp = dest.with_name(f"{dest.name}.unpack-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as zf:
                names = zf.namelist()
                for name in names:
                    parts = Path(name).parts
                    if name.startswith("/") or ".." in parts:
                        raise _Fatal(f"{archive.name} holds an unsafe path '{name}'")
                zf.extractall(tmp)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _Fatal(f"{archive.name} is not a valid zip: {exc}") from None
        # An archive whose entries all sit in one folder named like the destination (eval_bundle.zip holds
        # eval_bundle/...) unpacks to that folder's contents.
        tops = {Path(n).parts[0] for n in names if Path(n).parts}
        root = tmp / dest.name if tops == {dest.name} and (tmp / dest.name).is_dir() else tmp
        (root / UNPACKED_MARKER).write_text(archive_sha + "\n")
        old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(root, dest)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def stage_one(self, asset: Asset) -> str:
        """Make one asset present and verified. Returns 'present' or 'fetched'; raises _Fatal on failure."""
        rel = asset.download_path
        final = self.data_dir / rel
        entry = self.lock.get(rel)
        size, sha = expected_of(asset, entry)
        outcome = "present"
        if final.exists():
            problem, actual_size, actual_sha = check_file(final, size, sha, self.stop)
            if problem:
                self._note(f"damaged {rel}: {problem}; fetching it again")
                final.unlink()
            else:
                if entry is None:
                    self.lock.record(rel, asset.url, actual_size, actual_sha)
                self._grow_total(actual_size)
                self._advance(actual_size, downloaded=False)
        if not final.exists():
            outcome = "fetched"
            for fresh in (False, True):
                dl = self._download(asset, final, size)
                problem = None
                if size is not None and dl.hashed != size:
                    problem = f"size {dl.hashed} != expected {size}"
                elif sha is not None and dl.hasher.hexdigest() != sha:
                    source = "the manifest" if asset.sha256 else LOCK_NAME
                    problem = (f"sha256 {dl.hasher.hexdigest()} differs from {source} ({sha}); the file changed upstream "
                               f"or the mirror serves another file. If the new file is right, delete its entry from "
                               f"{self.lock.path}")
                if problem:
                    dl.part.unlink(missing_ok=True)
                # A resumed .part may hold the start of an older version of the file: one clean try before failing.
                if not problem or fresh or not dl.resumed_from:
                    break
                self._note(f"{rel}: check failed after a resumed download; fetching it whole once more")
            if problem:
                raise _Fatal(problem)
            os.replace(dl.part, final)
            actual_sha = dl.hasher.hexdigest()
            if entry is None:
                self.lock.record(rel, asset.url, dl.hashed, actual_sha)
        if asset.unpack == "zip":
            self._unpack(asset, final, actual_sha)
        return outcome

    # -- many files -------------------------------------------------------------------------------------------
    def run(self, assets: list[Asset]) -> "StagingSummary":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.data_dir):
            return self._run(assets)

    def _run(self, assets: list[Asset]) -> "StagingSummary":
        start = time.perf_counter()
        fetched, present, failed = [], [], []
        known_total = 0  # sizes get added as they become known
        if self.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=known_total, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=f"staging {len(assets)} files", dynamic_ncols=True,
                             mininterval=0.5 if sys.stderr.isatty() else 30)  # a batch log gets a line per 30 s
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="stage")
        try:
            futures = {pool.submit(self.stage_one, asset): asset for asset in assets}
            for future in as_completed(futures):
                asset = futures[future]
                try:
                    (fetched if future.result() == "fetched" else present).append(asset)
                except (_Fatal, OSError) as exc:  # OSError: the local side (disk full, permissions)
                    why = str(exc) if isinstance(exc, _Fatal) else f"{type(exc).__name__}: {exc}"
                    failed.append((asset, why))
                    self._note(f"FAILED {asset.download_path}: {why}")
        except KeyboardInterrupt:
            self.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        seconds = time.perf_counter() - start
        return StagingSummary(fetched=fetched, present=present, failed=failed,
                              bytes_downloaded=self.bytes_downloaded, seconds=seconds)


@dataclass
class StagingSummary:
    fetched: list[Asset]
    present: list[Asset]
    failed: list[tuple[Asset, str]]
    bytes_downloaded: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes_downloaded / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        return (f"staged {len(self.fetched) + len(self.present)}/{len(self.fetched) + len(self.present) + len(self.failed)}"
                f" files ({len(self.fetched)} fetched, {len(self.present)} already present and verified, "
                f"{len(self.failed)} failed): {self.bytes_downloaded / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"= {self.mb_per_s:.1f} MB/s")


def stage(assets: list[Asset], data_dir: str | os.PathLike, jobs: int = 8, **kwargs) -> StagingSummary:
    """Fetch and verify `assets` under `data_dir`; raises StagingError (exit 1) naming every file that failed."""
    summary = Stager(Path(data_dir), jobs=jobs, **kwargs).run(assets)
    if summary.failed:
        lines = "; ".join(f"{a.download_path}: {why}" for a, why in summary.failed)
        raise StagingError(f"{len(summary.failed)} file(s) failed: {lines}. Run the same command again to resume")
    return summary
