"""Inference speed: the engine with and without its KV cache, and the web API under concurrent streaming clients.

1. Engine (in process): time to first token (prefill + first sample) and decode tokens/s for one prompt, with the
   KV cache and with naive recomputation of the whole sequence every step; the ratio is what the cache buys.
   Also n=4 samples from one shared prefill (aggregate tokens/s).
2. Web API: a real `nanoforge web` subprocess; 1, 4 and 16 concurrent clients stream completions from
   /v1/chat/completions; tokens/s and requests/s over the whole wave, mean time to first token and p95 latency.

Speed depends on the model's shape, not its weights, so without --run-dir the benchmark writes a throwaway run
with the demo preset's model shape (random weights, a byte-level tokenizer). Every request asks for exactly
--decode-tokens tokens (`ignore_eos`), so runs are comparable.

    python benchmarks/inference.py [--run-dir DIR] [--preset demo] [--prompt-tokens 128] [--decode-tokens 128]
                                   [--clients 1,4,16] [--requests-per-client 2] [--threads N]
                                   [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]


def synthetic_run(run_dir: Path, preset: str) -> None:
    """A run dir holding a random model of the preset's shape as its 'base' checkpoint and a byte tokenizer."""
    from nanoforge.config import make_config
    from nanoforge.model.gpt import GPT, GPTConfig
    from nanoforge.tokenizer.bpe import Tokenizer, save_directory_atomic
    from nanoforge.train.checkpoint import mark_done, save_checkpoint

    cfg = make_config(preset, [])
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_model_config(cfg.model))
    with torch.no_grad():  # the init zeroes output projections; real weights are not zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tokenizer = Tokenizer({bytes([i]): i for i in range(256)})
    save_directory_atomic(tokenizer, run_dir / "tokenizer", extra_files={"DONE": b'{"vocab_size": 265}\n'})
    save_checkpoint(run_dir, "base", 0, {"model.pt": model.state_dict()}, {"config": cfg.to_dict()}, keep=1)
    mark_done(run_dir, "base", {"synthetic": True})


def bench_engine(run_dir: Path, prompt_tokens: int, decode_tokens: int, device: torch.device) -> dict:
    from nanoforge.model.load import load_model, load_tokenizer
    from nanoforge.serve.engine import Engine, SamplingParams

    model, cfg, _ = load_model(run_dir, "base", device=device)
    tok = load_tokenizer(run_dir)
    engine = Engine(model, tok, device)
    torch.manual_seed(1)
    prompt = [tok.bos_id, *torch.randint(0, 256, (prompt_tokens - 1,)).tolist()]

    def timed(use_cache: bool, num_samples: int = 1) -> dict:
        params = SamplingParams(temperature=1.0, top_k=50, max_tokens=decode_tokens, seed=0,
                                num_samples=num_samples, ignore_eos=True)
        start = time.perf_counter()
        first = None
        produced = 0
        for step in engine.stream(prompt, params, use_cache=use_cache):
            if first is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first = time.perf_counter()
            produced += len(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        end = time.perf_counter()
        decode_steps = produced // num_samples - 1
        return {"ttft_ms": (first - start) * 1000, "decode_tokens_per_s": decode_steps * num_samples / (end - first),
                "tokens": produced}

    timed(True)  # warm-up
    timed(False)
    # The median of three runs: shared machines are noisy.
    cached = sorted((timed(True) for _ in range(3)), key=lambda r: r["decode_tokens_per_s"])[1]
    naive = timed(False)
    batched = timed(True, num_samples=4)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": {"depth": cfg.model.depth, "width": model.config.n_embd, "params": params,
                  "sequence_len": cfg.model.sequence_len},
        "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
        "kv_cache": cached, "no_cache": naive, "kv_cache_4_samples": batched,
        "decode_speedup": cached["decode_tokens_per_s"] / naive["decode_tokens_per_s"],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_one(url: str, prompt: str, decode_tokens: int, seed: int) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "stream": True, "max_tokens": decode_tokens,
            "temperature": 1.0, "seed": seed, "ignore_eos": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", url, json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ttft_s": (first or end) - start, "latency_s": end - start, "tokens": tokens}


def bench_web(run_dir: Path, clients_list: list[int], requests_per_client: int, prompt_tokens: int,
              decode_tokens: int, threads: int | None) -> list[dict]:

    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "nanoforge", "web", "--run-dir", str(run_dir),
                               "--port", str(port), "--max-tokens-cap", str(decode_tokens)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"nanoforge web did not come up; log: {log.name}")
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        replicas = httpx.get(base + "/health").json()["replicas"]
        url = base + "/v1/chat/completions"
        prompt = "word " * max(1, prompt_tokens // 2)  # byte tokenizer: ~5 tokens a word; trimmed below if long
        prompt = prompt[: max(1, prompt_tokens - 8)]
        stream_one(url, prompt, 8, 0)  # warm-up
        rows = []
        for clients in clients_list:
            results: list[dict] = []
            lock = threading.Lock()

            def client(index: int) -> None:
                for k in range(requests_per_client):
                    out = stream_one(url, prompt, decode_tokens, seed=index * 1000 + k)
                    with lock:
                        results.append(out)

            workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            start = time.perf_counter()
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            wall = time.perf_counter() - start
            latencies = sorted(r["latency_s"] for r in results)
            rows.append({
                "clients": clients, "requests": len(results), "replicas": replicas, "wall_s": wall,
                "tokens_per_s": sum(r["tokens"] for r in results) / wall,
                "requests_per_s": len(results) / wall,
                "mean_ttft_s": statistics.mean(r["ttft_s"] for r in results),
                "p95_latency_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
            })
            print(f"  {clients:>2} clients: {rows[-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
        return rows
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", help="a trained run (default: a throwaway run of the preset's shape)")
    parser.add_argument("--preset", default="demo", help="model shape for the throwaway run (default demo)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (here and in the server; default: "
                        "torch's choice). On a shared, busy machine 1 thread avoids oversubscription stalls")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference.json"))
    args = parser.parse_args()
    clients_list = [int(c) for c in args.clients.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="nanoforge-inference-bench-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else Path(tmp) / "run"
        if not args.run_dir:
            synthetic_run(run_dir, args.preset)
        device = torch.device(args.device)
        print("engine ...", file=sys.stderr, flush=True)
        engine = bench_engine(run_dir, args.prompt_tokens, args.decode_tokens, device)
        print("web API ...", file=sys.stderr, flush=True)
        web = bench_web(run_dir, clients_list, args.requests_per_client, args.prompt_tokens, args.decode_tokens,
                        args.threads)

    m = engine["model"]
    print(f"\nengine: depth {m['depth']}, width {m['width']}, {m['params'] / 1e6:.1f}M params, "
          f"prompt {engine['prompt_tokens']} tokens, {engine['decode_tokens']} decoded, device {args.device}")
    print(f"{'':<22}{'TTFT ms':>10}{'decode tok/s':>14}")
    for name, key in [("KV cache", "kv_cache"), ("no cache (recompute)", "no_cache"),
                      ("KV cache, 4 samples", "kv_cache_4_samples")]:
        print(f"{name:<22}{engine[key]['ttft_ms']:>10.1f}{engine[key]['decode_tokens_per_s']:>14.1f}")
    print(f"decode speed-up from the KV cache: {engine['decode_speedup']:.1f}x")
    print(f"\nweb API ({web[0]['replicas']} replica(s), streaming, {args.decode_tokens} tokens a request)")
    print(f"{'clients':>8}{'requests':>10}{'tok/s':>10}{'req/s':>10}{'mean TTFT s':>13}{'p95 latency s':>15}")
    for row in web:
        print(f"{row['clients']:>8}{row['requests']:>10}{row['tokens_per_s']:>10.1f}{row['requests_per_s']:>10.2f}"
              f"{row['mean_ttft_s']:>13.2f}{row['p95_latency_s']:>15.2f}")

    result = {
        "benchmark": "inference", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device,
                 "torch": torch.__version__},
        "run_dir": args.run_dir or f"synthetic ({args.preset} shape, random weights)",
        "engine": engine, "web": web,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
