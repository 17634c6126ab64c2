"""Staging and preflight against a real HTTP server on 127.0.0.1 (tests/http_fixture.py), with real faults:
dropped connections, 503s, a server that ignores Range, files changed upstream, files damaged on disk."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from http_fixture import FileServer
from nanoforge.config import make_config
from nanoforge.data import manifest as mf
from nanoforge.data.manifest import Asset, build_manifest
from nanoforge.data.preflight import network_disabled, run_preflight, stage_requirements
from nanoforge.data.staging import LOCK_NAME, Stager, StagingError, stage
from nanoforge.errors import UserError
from nanoforge.plan import derive_plan

REPO = Path(__file__).resolve().parents[1]
SHARED_EVAL_BUNDLE = REPO.parent / "shared" / "data" / "eval_bundle"
RUN_SETTINGS = ["--preset", "d20", "--set", "data.num_shards=2", "--set", "tokenizer.max_chars=1000"]


# ---------------------------------------------------------------------------------------------------------------
# helpers


def write_parquet(path: Path, columns: tuple[str, ...], rows: int = 64, text_bytes: int = 2048, seed: int = 0):
    """A parquet file with the given columns; random hex text keeps it from compressing to nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = __import__("random").Random(seed)
    data = {c: [f"{c} {i} " + rng.randbytes(text_bytes // 2).hex() for i in range(rows)] for c in columns}
    pq.write_table(pa.table(data), path, row_group_size=16, compression="none")


def write_eval_bundle_zip(path: Path, tasks: dict[str, list[dict]]):
    """eval_bundle.zip as upstream lays it out: eval_bundle/core.yaml + eval_bundle/eval_data/<uri>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        core = "icl_tasks:\n" + "".join(
            f"-\n  label: {Path(uri).stem}\n  dataset_uri: {uri}\n  num_fewshot: [0]\n  icl_task_type: multiple_choice\n"
            for uri in tasks)
        zf.writestr("eval_bundle/core.yaml", core)
        for uri, rows in tasks.items():
            zf.writestr(f"eval_bundle/eval_data/{uri}", "".join(json.dumps(r) + "\n" for r in rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def build_mirror(root: Path, cfg) -> list[Asset]:
    """Serve every asset of `cfg`'s manifest from `root`, in the data-dir layout a mirror uses."""
    assets = build_manifest(cfg)
    for i, asset in enumerate(assets):
        target = root / asset.download_path
        if asset.kind == "parquet":
            write_parquet(target, asset.columns, seed=i)
        else:
            write_eval_bundle_zip(target, {"world_knowledge/arc_easy.jsonl": [{"query": "q", "choices": ["a", "b"],
                                                                                "gold": 0}],
                                           "commonsense_reasoning/copa.jsonl": [{"query": "c", "gold": 1}]})
    return assets


def big_file(path: Path, size: int, seed: int = 1) -> bytes:
    data = __import__("random").Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def one_asset(server: FileServer, rel: str) -> Asset:
    return Asset(name=rel, url=f"{server.url}/{rel}", dest=rel, stages=("base",), kind="parquet")


def run_cli(*args, env_extra=None, timeout=120):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "nanoforge", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """A served mirror of a small d20 run (2 training shards + validation + eval bundle + chat datasets)."""
    root = tmp_path / "mirror"
    with FileServer(root) as server:
        monkeypatch.setenv(mf.MIRROR_ENV, server.url)
        cfg = make_config("d20", ["data.num_shards=2", "tokenizer.max_chars=1000",
                                  f"data.data_dir={tmp_path / 'data'}"])
        build_mirror(root, cfg)
        yield server, cfg


# ---------------------------------------------------------------------------------------------------------------
# manifest


def test_manifest_sizes_shard_count_from_token_budget_and_keeps_validation_last():
    cfg = make_config("d20")
    assets = build_manifest(cfg)
    shards = [a for a in assets if a.dest.startswith("corpora/fineweb-edu/")]
    expected_train = math.ceil(derive_plan(cfg).tokens / mf.TOKENS_PER_SHARD)
    assert len(shards) == expected_train + 1
    assert shards[-1].dest == "corpora/fineweb-edu/shard_01822.parquet" and "base" in shards[-1].stages
    assert sorted(a.dest for a in shards)[-1] == shards[-1].dest  # last in name order = validation
    assert shards[0].url.endswith("fineweb-edu-100b-shuffle/resolve/main/shard_00000.parquet")
    tokenizer_shards = [a for a in shards if "tokenizer" in a.stages]
    assert len(tokenizer_shards) == math.ceil(cfg.tokenizer.max_chars / mf.FINEWEB_EDU.chars_per_shard)
    bundle = [a for a in assets if a.kind == "eval_bundle"]
    assert bundle[0].url == mf.EVAL_BUNDLE_URL and bundle[0].unpack == "zip" and bundle[0].dest == "eval_bundle"
    chat = {a.dest for a in assets if a.dest.startswith("chat/")}
    assert {"chat/gsm8k/train.parquet", "chat/mmlu/auxiliary_train.parquet", "chat/humaneval/test.parquet",
            "chat/arc-challenge/test.parquet", "chat/smoltalk/train-00003.parquet"} <= chat
    assert mf.chat_split_files("/d", "smoltalk", "train")[0] == Path("/d/chat/smoltalk/train-00000.parquet")
    # a bigger model needs more shards
    assert len(build_manifest(make_config("d26"))) > len(assets)


def test_manifest_demo_needs_no_download_and_mirror_rewrites_every_url(monkeypatch):
    assert build_manifest(make_config("demo")) == []
    monkeypatch.setenv(mf.MIRROR_ENV, "http://127.0.0.1:9/m/")
    assets = build_manifest(make_config("d20", ["data.num_shards=1"]))
    assert all(a.url == f"http://127.0.0.1:9/m/{a.download_path}" for a in assets)
    monkeypatch.setenv(mf.MIRROR_ENV, "ftp://nope")
    with pytest.raises(UserError, match="mirror"):
        build_manifest(make_config("d20"))
    monkeypatch.delenv(mf.MIRROR_ENV)
    cfg = make_config("d20", ["data.mirror=http://site/mirror"])
    assert build_manifest(cfg)[0].url == "http://site/mirror/corpora/fineweb-edu/shard_00000.parquet"
    eval_only = mf.assets_for_stages(build_manifest(cfg), mf.parse_stages("eval"))
    assert {a.dest for a in eval_only} >= {"eval_bundle", "chat/humaneval/test.parquet",
                                           "corpora/fineweb-edu/shard_01822.parquet"}
    assert not any(a.dest == "corpora/fineweb-edu/shard_00000.parquet" for a in eval_only)


# ---------------------------------------------------------------------------------------------------------------
# staging through the CLI, end to end


def test_stage_cli_fetches_everything_in_parallel_then_preflight_passes(mirror, tmp_path):
    server, cfg = mirror
    server.rate_limit = 2_000_000  # keeps transfers open long enough to overlap
    run_dir = tmp_path / "run"
    settings = RUN_SETTINGS + ["--set", f"data.data_dir={tmp_path / 'data'}"]
    result = run_cli("stage", "--run-dir", str(run_dir), *settings, "--jobs", "4", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "fetched" in result.stdout and "MB/s" in result.stdout
    assert server.max_in_flight > 1
    assert (run_dir / "config.yaml").is_file()

    data_dir = tmp_path / "data"
    assets = build_manifest(cfg)
    lock = json.loads((data_dir / LOCK_NAME).read_text())["files"]
    for asset in assets:
        served = (server.root / asset.download_path).read_bytes()
        assert (data_dir / asset.download_path).read_bytes() == served
        assert lock[asset.download_path]["sha256"] == hashlib.sha256(served).hexdigest()
        assert lock[asset.download_path]["size"] == len(served)
    assert (data_dir / "eval_bundle" / "core.yaml").is_file()
    assert (data_dir / "eval_bundle" / "eval_data" / "commonsense_reasoning" / "copa.jsonl").is_file()
    assert not list(data_dir.rglob("*.part"))

    # a second run verifies what is there and downloads nothing
    served_before = len(server.requests)
    again = run_cli("stage", "--run-dir", str(run_dir), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == served_before
    assert f"0 fetched, {len(assets)} already present" in again.stdout

    ok = run_cli("preflight", "--run-dir", str(run_dir))
    assert ok.returncode == 0, ok.stderr
    assert "preflight ok" in ok.stdout


# ---------------------------------------------------------------------------------------------------------------
# faults


def test_interrupted_download_resumes_where_it_stopped(tmp_path):
    root, data = tmp_path / "srv", tmp_path / "data"
    payload = big_file(root / "big.bin", 3_000_000)
    with FileServer(root) as server:
        server.drop_after["big.bin"] = 1_000_000
        summary = stage([one_asset(server, "big.bin")], data, jobs=1, backoff=0.01, progress=False)
        assert (data / "big.bin").read_bytes() == payload
        assert server.requests_for("big.bin") == [(None, 200), ("bytes=1000000-", 206)]
        assert summary.bytes_downloaded == len(payload)

        # a .part left by a killed process is continued by the next run, from its size
        (data / "big.bin").unlink()
        (data / LOCK_NAME).unlink()
        (data / "big.bin.part").write_bytes(payload[:1_234_567])
        stage([one_asset(server, "big.bin")], data, jobs=1, progress=False)
        assert server.requests_for("big.bin")[-1] == ("bytes=1234567-", 206)
        assert (data / "big.bin").read_bytes() == payload
        assert not (data / "big.bin.part").exists()


def test_503_is_retried_with_backoff_and_a_server_ignoring_range_restarts(tmp_path):
    root, data = tmp_path / "srv", tmp_path / "data"
    payload = big_file(root / "f.bin", 500_000)
    with FileServer(root) as server:
        server.fail_503["f.bin"] = 3
        stage([one_asset(server, "f.bin")], data, jobs=1, backoff=0.01, progress=False)
        assert [s for _, s in server.requests_for("f.bin")] == [503, 503, 503, 200]
        assert (data / "f.bin").read_bytes() == payload

        (data / "f.bin").unlink()
        (data / "f.bin.part").write_bytes(payload[:100_000])
        server.ignore_range = True
        stage([one_asset(server, "f.bin")], data, jobs=1, progress=False)
        assert server.requests_for("f.bin")[-1] == ("bytes=100000-", 200)
        assert (data / "f.bin").read_bytes() == payload


def test_corrupted_final_file_is_detected_and_fetched_again(mirror, tmp_path):
    server, cfg = mirror
    data_dir = cfg.data_dir()
    assets = build_manifest(cfg)
    stage(assets, data_dir, jobs=4, progress=False)
    victim, truncated = assets[0], assets[1]
    path = data_dir / victim.download_path
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, different bytes: only the sha256 can tell
    path.write_bytes(bytes(damaged))
    short = data_dir / truncated.download_path
    short.write_bytes(short.read_bytes()[:1000])

    before = len(server.requests)
    stager = Stager(data_dir, jobs=4, progress=False)
    summary = stager.run(assets)
    assert not summary.failed
    assert {a.dest for a in summary.fetched} == {victim.dest, truncated.dest}
    assert len(server.requests) == before + 2
    assert path.read_bytes() == (server.root / victim.download_path).read_bytes()
    assert short.read_bytes() == (server.root / truncated.download_path).read_bytes()
    assert any("damaged" in n and victim.dest in n for n in stager.notes)


def test_file_changed_upstream_is_an_error_naming_it_and_leaves_no_file(mirror, tmp_path):
    server, cfg = mirror
    run_dir = tmp_path / "run"
    settings = RUN_SETTINGS + ["--set", f"data.data_dir={cfg.data_dir()}"]
    assert run_cli("stage", "--run-dir", str(run_dir), *settings, "--no-progress").returncode == 0
    victim = "chat/gsm8k/test.parquet"
    write_parquet(server.root / victim, ("question", "answer"), seed=999)  # upstream now serves other bytes
    (cfg.data_dir() / victim).unlink()

    result = run_cli("stage", "--run-dir", str(run_dir), "--no-progress")
    assert result.returncode == 1
    assert victim in result.stderr and "sha256" in result.stderr and LOCK_NAME in result.stderr
    assert not (cfg.data_dir() / victim).exists()
    assert not (cfg.data_dir() / (victim + ".part")).exists()


def test_failure_never_leaves_a_partial_file_under_the_final_name(tmp_path):
    root, data = tmp_path / "srv", tmp_path / "data"
    big_file(root / "a.bin", 2_000_000)
    big_file(root / "b.bin", 100_000, seed=2)
    with FileServer(root) as server:
        server.cut_at["a.bin"] = 700_000
        server.fail_503["b.bin"] = 50
        with pytest.raises(StagingError) as err:
            stage([one_asset(server, "a.bin"), one_asset(server, "b.bin")], data, jobs=2, retries=0,
                  backoff=0.01, progress=False)
        assert "a.bin" in str(err.value) and "b.bin" in str(err.value) and "HTTP 503" in str(err.value)
        assert server.requests_for("a.bin") == [(None, 200), ("bytes=700000-", 206)]
        assert err.value.exit_code == 1
        assert not (data / "a.bin").exists() and not (data / "b.bin").exists()
        assert (data / "a.bin.part").stat().st_size == 700_000  # kept for the next run to resume
        missing = one_asset(server, "nope.bin")
        with pytest.raises(StagingError, match="HTTP 404"):
            stage([missing], data, progress=False)  # 4xx is not retried
        assert server.requests_for("nope.bin") == [(None, 404)]


def test_zip_is_unpacked_into_place_and_again_when_the_folder_is_gone(tmp_path):
    root, data = tmp_path / "srv", tmp_path / "data"
    write_eval_bundle_zip(root / "eval_bundle.zip", {"x/t.jsonl": [{"a": 1}]})
    with FileServer(root) as server:
        asset = Asset(name="bundle", url=f"{server.url}/eval_bundle.zip", dest="eval_bundle", stages=("eval",),
                      kind="eval_bundle", unpack="zip")
        stage([asset], data, progress=False)
        assert (data / "eval_bundle" / "eval_data" / "x" / "t.jsonl").is_file()
        shutil.rmtree(data / "eval_bundle")
        stage([asset], data, progress=False)
        assert (data / "eval_bundle" / "core.yaml").is_file()
        assert len(server.requests) == 1  # the verified zip was reused
        visible = sorted(p.name for p in data.iterdir() if not p.name.startswith("."))
        assert visible == ["eval_bundle", "eval_bundle.zip", LOCK_NAME]  # no temp folders left


# ---------------------------------------------------------------------------------------------------------------
# preflight


def test_preflight_lists_what_is_missing_and_exits_3_with_the_fix(tmp_path):
    run_dir = tmp_path / "run"
    settings = RUN_SETTINGS + ["--set", f"data.data_dir={tmp_path / 'empty'}"]
    # create the run (config.yaml) without downloading: point the mirror at a closed port with no retries
    created = run_cli("stage", "--run-dir", str(run_dir), *settings, "--retries", "0", "--no-progress",
                      "--stages", "report", env_extra={mf.MIRROR_ENV: "http://127.0.0.1:9"})
    assert created.returncode == 0 and (run_dir / "config.yaml").is_file(), created.stderr
    start = time.perf_counter()
    result = run_cli("preflight", "--run-dir", str(run_dir), timeout=60)
    elapsed = time.perf_counter() - start
    print(f"preflight with everything missing: {elapsed:.2f} s")
    assert result.returncode == 3
    cfg = make_config("d20", ["data.num_shards=2", "tokenizer.max_chars=1000", f"data.data_dir={tmp_path / 'empty'}"])
    for asset in build_manifest(cfg):
        assert str(tmp_path / "empty" / asset.dest) in result.stderr
    assert f"fix: nanoforge stage --run-dir {run_dir}" in result.stderr
    assert "Traceback" not in result.stderr

    base = run_cli("preflight", "--run-dir", str(run_dir), "--stage", "base")
    assert base.returncode == 3
    assert f"nanoforge tokenizer train --run-dir {run_dir}" in base.stderr
    assert "chat/gsm8k" not in base.stderr  # base does not read the chat datasets


def test_preflight_finds_damaged_files_and_the_demo_corpus(mirror, tmp_path):
    server, cfg = mirror
    stage(build_manifest(cfg), cfg.data_dir(), progress=False)
    assert run_preflight(cfg, tmp_path / "run").ok
    shard = cfg.data_dir() / "corpora/fineweb-edu/shard_00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated: size differs from the lock, footer gone
    (cfg.data_dir() / "eval_bundle/eval_data/commonsense_reasoning/copa.jsonl").unlink()
    report = run_preflight(cfg, tmp_path / "run")
    assert {(p.state, p.requirement.path.name) for p in report.problems} == {
        ("damaged", "shard_00001.parquet"), ("damaged", "eval_bundle")}
    assert "copa.jsonl missing" in report.format()

    demo = make_config("demo", [f"data.data_dir={tmp_path / 'demo-data'}"])
    report = run_preflight(demo, tmp_path / "demo-run")
    assert [p.requirement.fix for p in report.problems] == ["nanoforge data build-demo"]
    corpus = tmp_path / "demo-data/corpora/demo"
    write_parquet(corpus / "shard_00000.parquet", ("text",))
    write_parquet(corpus / "shard_00001.parquet", ("text",))
    assert run_preflight(demo, tmp_path / "demo-run").ok
    assert [r.kind for r in stage_requirements(demo, tmp_path / "demo-run", "mid")] == ["tokenizer"]


def test_preflight_reads_the_real_eval_bundle_layout(tmp_path):
    if not SHARED_EVAL_BUNDLE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_EVAL_BUNDLE} is missing")
        pytest.skip("shared test data not present")
    from nanoforge.data.preflight import _check_eval_bundle

    shutil.copytree(SHARED_EVAL_BUNDLE, tmp_path / "eval_bundle")
    problem = _check_eval_bundle(tmp_path / "eval_bundle")
    # core.yaml names 21 files (22 tasks; hellaswag's two share one); the shared copy leaves out 7 of them
    # (see shared/data/README.md)
    assert problem.startswith("7 of 21 task files"), problem
    for name in ("hellaswag", "squad", "coqa", "boolq", "lambada_openai", "bigbench_qa_wikidata",
                 "bigbench_language_identification"):
        assert f"{name}.jsonl missing" in problem


def test_network_is_off_during_preflight_except_loopback(tmp_path):
    big_file(tmp_path / "x.bin", 10)
    with FileServer(tmp_path) as server, network_disabled():
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        with pytest.raises(OSError, match="network access during preflight"):
            socket.create_connection(("192.0.2.1", 80), timeout=5)
        with pytest.raises(OSError, match="network access during preflight"):
            socket.getaddrinfo("huggingface.co", 443)
        host, port = server.url.removeprefix("http://").split(":")
        socket.create_connection((host, int(port)), timeout=5).close()
    socket.getaddrinfo("localhost", 80)  # restored


# ---------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("args, message", [
    (["stage", "--preset", "d20", "--jobs", "0"], "--jobs"),
    (["stage"], "--run-dir DIR or --preset"),
    (["stage", "--preset", "d20", "--stages", "base,nope"], "unknown stage"),
    (["stage", "--preset", "nope"], "unknown preset"),
    (["stage", "--run-dir", "/nonexistent-nanoforge-run"], "config.yaml does not exist"),
    (["preflight", "--run-dir", "/tmp", "--stage", "nope"], "invalid choice"),
    (["preflight"], "--run-dir"),
    (["stage", "--preset", "d20", "--set", "data.mirror=ftp://x"], "mirror"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_second_stager_on_the_same_data_dir_is_refused(tmp_path):
    from nanoforge.data.staging import _exclusive

    (tmp_path / "data").mkdir()
    with _exclusive(tmp_path / "data"):
        with pytest.raises(StagingError, match=f"another `nanoforge stage` \\(pid {os.getpid()}\\)"):
            Stager(tmp_path / "data", progress=False).run([])
    assert Stager(tmp_path / "data", progress=False).run([]).failed == []
