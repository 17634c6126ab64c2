"""`nanoforge workflows prepare`: a folder of workflow files -> windowed token tensors for training.

Each document becomes its token ids plus EOS. It is cut into windows of `context_size` tokens: a leading
position token (the window's index in its document, `SchemaTokenizer.position_token(k)`) and then the next
`context_size - 1` tokens of the document (stride `context_size - 1`, no overlap); the last window is padded with
PAD. Documents, not windows, are split into train and val (a seeded shuffle of their relative paths), so no
document is in both. The tokenizer is trained on the train documents only unless one is given.

Output folder: train.pt / val.pt (int32 tensors [N, context_size]) or, with `--format memmap`, train.bin /
val.bin (raw little-endian arrays written window by window, for corpora larger than RAM; open them with
`numpy.memmap(path, dtype, mode="r", shape=metadata["shapes"][split])`), plus metadata.json and tokenizer/.
Everything is written under temporary names and renamed at the end: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanoforge.errors import UserError

DOCUMENT_SUFFIXES = (".yml", ".yaml", ".json")


@dataclass
class Corpus:
    files: list[Path]
    texts: dict[str, str] = field(default_factory=dict)  # relative path -> text
    unreadable: list[str] = field(default_factory=list)


def find_documents(input_dir: str | os.PathLike) -> list[Path]:
    root = Path(input_dir)
    if not root.is_dir():
        raise UserError(f"input folder {root} does not exist; pass --input DIR with YAML or JSON workflow files")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES)


def read_corpus(input_dir: str | os.PathLike) -> Corpus:
    root = Path(input_dir)
    files = find_documents(root)
    if not files:
        raise UserError(f"no .yml, .yaml or .json files under {root}; pass --input DIR with workflow files")
    corpus = Corpus(files)
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            corpus.texts[rel] = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            corpus.unreadable.append(rel)
    return corpus


def split_documents(names: list[str], train_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded shuffle of document names, then the first `train_split` share is train (at least one each when
    there are two or more documents and the split is below 1)."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_train = int(round(len(order) * train_split))
    if train_split < 1.0 and len(order) >= 2:
        n_train = min(max(n_train, 1), len(order) - 1)
    return sorted(order[:n_train]), sorted(order[n_train:])


def windows_of(ids: list[int], context_size: int, position_token, pad_id: int) -> np.ndarray:
    """[n_windows, context_size] rows: position token of window k, then ids[k*stride:(k+1)*stride], padded."""
    stride = context_size - 1
    n = max(1, -(-len(ids) // stride))
    rows = np.full((n, context_size), pad_id, dtype=np.int32)
    for k in range(n):
        chunk = ids[k * stride:(k + 1) * stride]
        rows[k, 0] = position_token(k)
        rows[k, 1:1 + len(chunk)] = chunk
    return rows


def prepare(input_dir, output_dir, context_size: int = 512, train_split: float = 0.8, vocab_size: int = 8192,
            tokenizer_dir=None, schema_path=None, fmt: str = "pt", seed: int = 0, progress: bool = True) -> dict:
    from tqdm import tqdm

    from nanoforge.tokenizer.schema import SchemaTokenizer, load_schema
    from nanoforge.workflows.canonical import DocumentError, canonical_json, parse_document

    if not isinstance(context_size, int) or context_size < 2:
        raise UserError(f"--context-size must be an integer >= 2, got {context_size!r}")
    if not 0.0 < train_split <= 1.0:
        raise UserError(f"--train-split must be in (0, 1], got {train_split!r}")
    if fmt not in ("pt", "memmap"):
        raise UserError(f"--format must be pt or memmap, got {fmt!r}")
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a folder")
    # what can fail fast does, before the long reading pass
    tokenizer = SchemaTokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    schema = load_schema(schema_path) if tokenizer is None else tokenizer.schema
    # what can fail fast does, before the long reading pass
    tokenizer = SchemaTokenizer.load(tokenizer_dir) if tokenizer_dir is not None else None
    schema = load_schema(schema_path) if tokenizer is None else tokenizer.schema
    root = Path(input_dir)
    files = find_documents(root)
    if not files:
        raise UserError(f"no .yml, .yaml or .json files under {root}; pass --input DIR with workflow files")
    # One pass reads and parses every file (YAML parsing is the slow part) and keeps only the canonical JSON
    # text, which is compact and re-parses fast for training and tokenizing.
    values, skipped = {}, []
    for path in tqdm(files, desc="reading", unit="file", disable=not progress):
        rel = path.relative_to(root).as_posix()
        try:
            values[rel] = canonical_json(parse_document(path.read_text(encoding="utf-8")))
        except (DocumentError, UnicodeDecodeError, OSError):
            skipped.append(rel)
    if not values:
        raise UserError(f"none of the {len(files)} files under {input_dir} parses as YAML or JSON")
    train_names, val_names = split_documents(list(values), train_split, seed)

    if tokenizer is None:
        tokenizer = SchemaTokenizer.train((values[n] for n in train_names), schema, vocab_size)

    output.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp-{os.getpid()}"
    tokenizer.save(output / f"tokenizer{suffix}")
    dtype = np.uint16 if fmt == "memmap" and tokenizer.vocab_size <= 65535 else np.int32
    shapes, counts, written = {}, {}, []
    total_tokens = fallback_tokens = 0
    bar = tqdm(total=len(values), desc="tokenizing", unit="doc", disable=not progress)
    try:
        for split, names in (("train", train_names), ("val", val_names)):
            rows_list, n_rows = [], 0
            bin_path = output / f"{split}.bin{suffix}"
            handle = open(bin_path, "wb") if fmt == "memmap" else None
            try:
                for name in names:
                    ids, stats = tokenizer.codec.encode_value(json.loads(values[name]))
                    ids.append(tokenizer.eos_id)
                    total_tokens += len(ids)
                    fallback_tokens += stats.fallback_tokens
                    rows = windows_of(ids, context_size, tokenizer.position_token, tokenizer.pad_id)
                    n_rows += len(rows)
                    if handle is not None:
                        handle.write(rows.astype(dtype).tobytes())
                    else:
                        rows_list.append(rows)
                    bar.update(1)
            finally:
                if handle is not None:
                    handle.close()
            shapes[split] = [n_rows, context_size]
            counts[f"{split}_documents"] = len(names)
            counts[f"{split}_windows"] = n_rows
            if fmt == "pt":
                import torch

                bin_path.unlink(missing_ok=True)
                stacked = np.concatenate(rows_list) if rows_list else np.zeros((0, context_size), np.int32)
                tmp = output / f"{split}.pt{suffix}"
                torch.save(torch.from_numpy(stacked), tmp)
                written.append((tmp, output / f"{split}.pt"))
            else:
                written.append((bin_path, output / f"{split}.bin"))
    except BaseException:
        bar.close()
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        for split in ("train", "val"):
            (output / f"{split}.bin{suffix}").unlink(missing_ok=True)
        import shutil

        shutil.rmtree(output / f"tokenizer{suffix}", ignore_errors=True)
        raise
    bar.close()
    metadata = {
        "format": fmt,
        "dtype": np.dtype(dtype).name,
        "context_size": context_size,
        "stride": context_size - 1,
        "window_layout": "position token of the window index k (capped at 63), then document tokens "
                         "[k*stride, (k+1)*stride), PAD after the document's EOS",
        "vocab_size": tokenizer.vocab_size,
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "position_token_0": tokenizer.position_token(0),
        "tokenizer_hash": tokenizer.content_hash(),
        "tokenizer_dir": "tokenizer",
        "seed": seed,
        "train_split": train_split,
        "shapes": shapes,
        "files": {split: f"{split}.{'pt' if fmt == 'pt' else 'bin'}" for split in ("train", "val")},
        "counts": {"files_found": len(files), "documents": len(values), "skipped": len(skipped),
                   "tokens": total_tokens, **counts},
        "fallback_fraction": fallback_tokens / total_tokens if total_tokens else 0.0,
        "skipped_files": sorted(skipped),
        "documents": {"train": train_names, "val": val_names},
    }
    import shutil

    final_tok = output / "tokenizer"
    if final_tok.exists():
        shutil.rmtree(final_tok)
    os.replace(output / f"tokenizer{suffix}", final_tok)
    for tmp, final in written:
        os.replace(tmp, final)
    stale = {"pt": ("train.bin", "val.bin"), "memmap": ("train.pt", "val.pt")}[fmt]
    for name in stale:  # a previous run in the other format would contradict metadata.json
        (output / name).unlink(missing_ok=True)
    meta_tmp = output / f"metadata.json{suffix}"
    meta_tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    os.replace(meta_tmp, output / "metadata.json")
    return metadata


def load_windows(output_dir, split: str) -> np.ndarray:
    """The windows of one split as a numpy array (memory-mapped for the memmap format)."""
    output = Path(output_dir)
    metadata = json.loads((output / "metadata.json").read_text(encoding="utf-8"))
    shape = tuple(metadata["shapes"][split])
    if metadata["format"] == "memmap":
        if shape[0] == 0:
            return np.zeros(shape, dtype=metadata["dtype"])
        return np.memmap(output / metadata["files"][split], dtype=metadata["dtype"], mode="r", shape=shape)
    import torch

    return torch.load(output / metadata["files"][split]).numpy()


def summary_lines(metadata: dict, output_dir) -> list[str]:
    c = metadata["counts"]
    lines = [
        f"files found:        {c['files_found']} ({c['skipped']} skipped: not valid YAML/JSON)",
        f"documents:          {c['documents']} ({c['train_documents']} train, {c['val_documents']} val, split by "
        f"document, seed {metadata['seed']})",
        f"tokens:             {c['tokens']:,} (fallback {100 * metadata['fallback_fraction']:.2f}%), "
        f"vocab {metadata['vocab_size']}",
        f"windows extracted:  {c['train_windows'] + c['val_windows']:,} (context {metadata['context_size']}, stride "
        f"{metadata['stride']})",
        f"train:              {c['train_windows']:,} windows, shape {tuple(metadata['shapes']['train'])}",
        f"val:                {c['val_windows']:,} windows, shape {tuple(metadata['shapes']['val'])}",
        f"written:            {Path(output_dir)}/{{{metadata['files']['train']}, {metadata['files']['val']}, "
        f"metadata.json, tokenizer/}} ({metadata['format']}, {metadata['dtype']})",
    ]
    if c["skipped"]:
        lines.append(f"skipped files:      {', '.join(metadata['skipped_files'][:5])}"
                     + (" ..." if c["skipped"] > 5 else ""))
    return lines
