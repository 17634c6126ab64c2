#!/bin/sh
# The images' %test (also `apptainer test [--nv] nanoforge.sif`):
#   - imports of the heavy dependencies and nanoforge, with versions printed;
#   - the installed rustbpe is still the one build-rustbpe.sh compiled (library hashes match its record);
#   - that rustbpe trains a tiny tokenizer and round-trips text;
#   - a tiny forward pass of nanoforge.model.gpt (on CUDA when visible);
#   - with --nv on a CUDA image: torch sees the GPU, and torch.compile (Triton, which needs libcuda.so) runs.
# CUDA is required only when the driver was bound in (/.singularity.d/libs/libcuda.so.1) or NANOFORGE_EXPECT_CUDA=1,
# so the build-time %test (no GPU) passes and `apptainer test --nv` on a GPU node checks the GPU path.
#   test.sh [--host]    --host: outside the image (skips the build record and the PATH checks)
set -eu
in_image=1
python=${NANOFORGE_PYTHON:-/opt/venv/bin/python}
if [ "${1:-}" = "--host" ]; then
    in_image=0
    python=${NANOFORGE_PYTHON:-python3}
fi
if [ "$in_image" -eq 1 ]; then
    found=$(command -v nanoforge || true)
    if [ "$found" != /opt/venv/bin/nanoforge ]; then
        echo "test.sh: nanoforge on PATH is '$found', expected /opt/venv/bin/nanoforge" >&2; exit 1
    fi
fi
nanoforge --version

"$python" - "$in_image" <<'PY'
import hashlib, json, os, sys
from pathlib import Path

in_image = sys.argv[1] == "1"

import numpy, pyarrow, rustbpe, tiktoken, torch  # noqa: E401
import nanoforge, nanoforge.cli  # noqa: E401

print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), "
      f"numpy {numpy.__version__}, pyarrow {pyarrow.__version__}, nanoforge {nanoforge.__version__}")

if in_image:
    from importlib import metadata
    record_path = Path(os.environ.get("NANOFORGE_BUILD_INFO", "/opt/nanoforge/build-info")) / "rustbpe.json"
    record = json.loads(record_path.read_text())
    dist = metadata.distribution("rustbpe")
    for name, sha256 in record["libraries"].items():
        located = next((f.locate() for f in dist.files if str(f) == name), None)
        if located is None or hashlib.sha256(Path(located).read_bytes()).hexdigest() != sha256:
            sys.exit(f"test.sh: installed rustbpe library {name} is not the one built from source ({record['wheel']})")
    print(f"rustbpe {dist.version}: the locally built wheel {record['wheel']} ({record['rustc']})")

texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["nanoforge builds its tokenizer from source"] * 50
tokenizer = rustbpe.Tokenizer()
tokenizer.train_from_iterator(iter(texts), 300)
ids = tokenizer.encode(texts[0])
if len(tokenizer.get_mergeable_ranks()) != 300 or len(ids) >= len(texts[0].encode()):
    sys.exit("test.sh: rustbpe did not learn the 44 merges a 300-token vocabulary needs")
if tokenizer.decode(ids) != texts[0]:
    sys.exit("test.sh: rustbpe decode(encode(text)) != text")
print(f"rustbpe: trained a 300-token vocabulary, {len(texts[0])} chars -> {len(ids)} tokens")

libcuda_bound = Path("/.singularity.d/libs/libcuda.so.1").exists()
expect_cuda = torch.version.cuda is not None and (libcuda_bound or os.environ.get("NANOFORGE_EXPECT_CUDA") == "1")
if expect_cuda and not torch.cuda.is_available():
    sys.exit("test.sh: the NVIDIA driver is bound in but torch.cuda.is_available() is False")
device = "cuda" if expect_cuda else "cpu"

try:
    from nanoforge.model.gpt import GPT, GPTConfig
except ImportError as exc:
    print(f"model: skipped, nanoforge.model.gpt not importable ({exc})")
else:
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=300, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)).to(device)
    idx = torch.randint(0, 300, (2, 16), device=device)
    loss = model(idx, targets=idx)
    if not torch.isfinite(loss):
        sys.exit(f"test.sh: tiny GPT forward pass gave a non-finite loss {loss.item()}")
    print(f"model: tiny GPT forward pass on {device}, loss {loss.item():.3f}")

if expect_cuda:
    compiled = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2.0)
    x = torch.randn(1024, device="cuda")
    if not torch.allclose(compiled(x), torch.nn.functional.gelu(x) * 2.0, atol=1e-5):
        sys.exit("test.sh: torch.compile on CUDA gave a wrong result")
    print(f"cuda: {torch.cuda.get_device_name(0)}, torch.compile through Triton works (libcuda found)")
else:
    print("cuda: not checked (run `apptainer test --nv` on a GPU node, or set NANOFORGE_EXPECT_CUDA=1)")
print("test.sh: OK")
PY
