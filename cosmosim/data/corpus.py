"""Assemble a corpus folder: per-domain train/val/trace text, a byte-level BPE, a manifest.

    {out}/{split}/{domain}.txt   for split in train, val, trace
    {out}/tokenizer.json         HF `tokenizers` byte-level BPE, trained on the train split only
    {out}/manifest.json          sources, sizes, sha256 of every file above, seed, date

Fetching (`sources.py`, needs apt and pip) is kept apart from assembling (`assemble_corpus`,
pure Python), so the split and tokenizer logic is tested on a small committed sample.
"""

import datetime
import hashlib
import os
import re
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from cosmosim.data.markup import normalize_whitespace
from cosmosim.data.sources import SOURCES
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes, atomic_write_json, read_json
from cosmosim.provenance import sha256_file

SPLITS = ("train", "val", "trace")
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FORMAT = "cosmosim-corpus/1"
VOCAB_RANGE = (4096, 8192)  # what the mini models are sized for; smaller only for test corpora
BYTE_ALPHABET = 256  # a byte-level BPE holds every byte as a token before any merge
_DOMAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # it becomes a file name


def default_corpus_dir() -> Path:
    return Path(os.environ.get("COSMOSIM_CORPUS", "corpus"))


def build_corpus(out_dir: Path, *, vocab_size: int = 8192, seed: int = 0, tokenizer_file: Path | None = None) -> Path:
    """Fetch every source (apt, pip), then assemble the corpus; returns the manifest's path.
    `tokenizer_file` reuses that tokenizer instead of training one (see `assemble_corpus`)."""
    with tempfile.TemporaryDirectory(prefix="cosmosim-sources-") as work:
        fetchers = tqdm(SOURCES.items(), desc="fetch sources")
        sources = [fetch(Path(work) / domain) for domain, fetch in fetchers]
    return assemble_corpus(
        {s.domain: [d.text for d in s.documents] for s in sources},
        out_dir,
        vocab_size=vocab_size,
        seed=seed,
        sources={s.domain: s.provenance() for s in sources},
        tokenizer_file=tokenizer_file,
    )


def assemble_corpus(
    docs_by_domain: dict[str, list[str]],
    out_dir: Path,
    *,
    vocab_size: int,
    seed: int,
    holdout_fraction: float = 0.05,
    min_holdout_chars: int = 150_000,
    sources: dict | None = None,
    chunk_chars: int = 20_000,
    strict_vocab_range: bool = True,
    tokenizer_file: Path | None = None,
) -> Path:
    """Split each domain's documents into train/val/trace, train the tokenizer, write the corpus.

    val and trace each get max(holdout_fraction × domain size, min_holdout_chars) characters of
    every domain, drawn as whole chunks (runs of paragraphs of about `chunk_chars`). Chunks
    shrink to a quarter of the holdout size when that is smaller, so a small holdout is still
    drawn from several places. `strict_vocab_range=False` allows a vocabulary outside
    VOCAB_RANGE, for test corpora. `tokenizer_file` (a tokenizer.json) is used instead of training
    one: HF tokenizers' BPE training breaks ties between equally frequent pairs in hash-map order
    (huggingface/tokenizers#1794), so two trainings on the same text can differ, and models meant
    to be compared must share one file. Returns the manifest's path.
    """
    _check_arguments(
        docs_by_domain, vocab_size, seed, holdout_fraction, min_holdout_chars, chunk_chars, strict_vocab_range
    )
    given = None if tokenizer_file is None else load_tokenizer_file(Path(tokenizer_file), vocab_size)  # before writing
    out_dir = Path(out_dir)
    texts: dict[tuple[str, str], str] = {}  # (split, domain) → file text
    for domain in tqdm(sorted(docs_by_domain), desc="split domains"):
        documents = [normalize_whitespace(d) for d in docs_by_domain[domain] if d.strip()]
        total_chars = sum(len(d) for d in documents)
        holdout_chars = max(round(holdout_fraction * total_chars), min_holdout_chars)
        chunks = split_domain(
            documents,
            domain=domain,
            seed=seed,
            holdout_chars=holdout_chars,
            chunk_chars=min(chunk_chars, max(1, holdout_chars // 4)),
        )
        for split, split_chunks in chunks.items():
            texts[split, domain] = "\n\n".join(split_chunks) + "\n"

    files: dict[str, str] = {}  # relative path → sha256
    sizes: dict[str, dict] = {domain: {} for domain in sorted(docs_by_domain)}
    for (split, domain), text in texts.items():
        data = text.encode("utf-8")
        files[f"{split}/{domain}.txt"] = _write_hashed(out_dir / split / f"{domain}.txt", data)
        sizes[domain][split] = {"bytes": len(data), "chars": len(text)}

    if given is None:
        tokenizer = train_tokenizer((text for (split, _), text in texts.items() if split == "train"), vocab_size)
        trained_on = "train"
    else:
        tokenizer, trained_on = given, f"given: {tokenizer_file} (sha256 {sha256_file(Path(tokenizer_file))})"
    files[TOKENIZER_FILE] = _write_hashed(out_dir / TOKENIZER_FILE, tokenizer.to_str().encode("utf-8"))

    manifest = {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "holdout_fraction": holdout_fraction,
        "min_holdout_chars": min_holdout_chars,
        "chunk_chars": chunk_chars,
        "splits": list(SPLITS),
        "domains": sorted(docs_by_domain),
        "sources": sources or {},
        "sizes": sizes,
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "model": "byte-level BPE",
            "vocab_size": tokenizer.get_vocab_size(),
            "trained_on": trained_on,
            "tokenizers_version": tokenizers.__version__,
        },
        "files": dict(sorted(files.items())),
    }
    # Written last: a manifest means every file it lists is complete.
    manifest_path = out_dir / MANIFEST_FILE
    atomic_write_json(manifest_path, manifest)
    return manifest_path


def _check_arguments(
    docs_by_domain, vocab_size, seed, holdout_fraction, min_holdout_chars, chunk_chars, strict_vocab_range
) -> None:
    if not docs_by_domain:
        raise InputError("docs_by_domain: empty; expected at least one domain of documents")
    if len(docs_by_domain) > np.iinfo(np.int8).max:
        raise InputError(f"docs_by_domain: {len(docs_by_domain)} domains; at most 127 fit int8 domain ids")
    for domain, documents in docs_by_domain.items():
        if not isinstance(domain, str) or not _DOMAIN_NAME.match(domain):
            raise InputError(f"domain {domain!r}: expected a lowercase name like 'austen' ([a-z][a-z0-9_]*)")
        if not any(d.strip() for d in documents):
            raise InputError(f"domain {domain!r}: no text; expected at least one non-empty document")
    low, high = VOCAB_RANGE if strict_vocab_range else (BYTE_ALPHABET, 1 << 20)
    if not (isinstance(vocab_size, int) and low <= vocab_size <= high):
        raise InputError(f"vocab_size {vocab_size!r}: expected an integer in {low}–{high}")
    if not (isinstance(seed, int) and seed >= 0):
        raise InputError(f"seed {seed!r}: expected a non-negative integer")
    if not 0 < holdout_fraction <= 0.25:
        raise InputError(f"holdout_fraction {holdout_fraction!r}: expected a fraction in (0, 0.25]")
    if not (isinstance(min_holdout_chars, int) and min_holdout_chars >= 1):
        raise InputError(f"min_holdout_chars {min_holdout_chars!r}: expected a positive integer")
    if not (isinstance(chunk_chars, int) and chunk_chars >= 1):
        raise InputError(f"chunk_chars {chunk_chars!r}: expected a positive integer")


def chunk_document(text: str, chunk_chars: int) -> list[str]:
    """Cut a document at paragraph breaks into runs of at least `chunk_chars` (the last may be short)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in text.strip("\n").split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def split_domain(
    documents: list[str], *, domain: str, seed: int, holdout_chars: int, chunk_chars: int
) -> dict[str, list[str]]:
    """Chunks of one domain's documents, dealt to val, then trace, then train; each in text order.

    The shuffle is seeded by (seed, domain name), so a domain's split does not change when
    other domains are added or removed.
    """
    chunks = [chunk for document in documents for chunk in chunk_document(document, chunk_chars)]
    total_chars = sum(len(c) for c in chunks)
    if 2 * holdout_chars > total_chars // 2:
        raise InputError(
            f"domain {domain!r}: {total_chars} characters cannot give val and trace {holdout_chars} each "
            "and keep half for train; lower min_holdout_chars or holdout_fraction"
        )
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode("utf-8"))])
    order = iter(rng.permutation(len(chunks)).tolist())
    chosen: dict[str, set[int]] = {}
    for split in ("val", "trace"):
        chosen[split], filled = set(), 0
        while filled < holdout_chars:
            index = next(order)
            chosen[split].add(index)
            filled += len(chunks[index])
    chosen["train"] = set(order)
    if not chosen["train"]:
        raise InputError(f"domain {domain!r}: every chunk went to val or trace; lower chunk_chars")
    return {split: [chunks[i] for i in sorted(chosen[split])] for split in SPLITS}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2 pre-tokenization, no normalizer: decode(encode(s)) == s)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer_file(path: Path, vocab_size: int) -> Tokenizer:
    """A tokenizer.json to reuse; it must have the vocabulary size asked for."""
    if not path.is_file():
        raise InputError(f"{path}: missing; expected a tokenizer.json (from a corpus folder)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust parser raises a bare Exception
        raise InputError(f"{path}: not a tokenizers JSON file ({str(error).splitlines()[0]})") from None
    if tokenizer.get_vocab_size() != vocab_size:
        raise InputError(f"{path}: vocabulary of {tokenizer.get_vocab_size()} tokens, expected --vocab-size {vocab_size}")
    return tokenizer


def _write_hashed(path: Path, data: bytes) -> str:
    """Write a corpus file atomically; returns the sha256 that the manifest records for it."""
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_manifest(corpus_dir: Path) -> dict:
    """The corpus manifest, checked for the fields the loaders rely on."""
    path = Path(corpus_dir) / MANIFEST_FILE
    manifest = read_json(path, hint="expected a corpus folder (run `cosmosim corpus build`)")
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(
            f"{path}: field 'format' is not {MANIFEST_FORMAT!r}; rebuild with `cosmosim corpus build`"
        )
    for field in ("domains", "files", "tokenizer"):
        if field not in manifest:
            raise InputError(f"{path}: field {field!r} missing; rebuild with `cosmosim corpus build`")
    return manifest


def verify_file(corpus_dir: Path, manifest: dict, relative_path: str) -> Path:
    """The path of a corpus file whose sha256 matches the manifest's."""
    path = Path(corpus_dir) / relative_path
    expected = manifest["files"].get(relative_path)
    if expected is None:
        raise InputError(f"{Path(corpus_dir) / MANIFEST_FILE}: no entry for {relative_path!r} in 'files'")
    if not path.is_file():
        raise InputError(f"{path}: missing; expected a file of the corpus (run `cosmosim corpus build`)")
    actual = sha256_file(path)
    if actual != expected:
        raise InputError(
            f"{path}: sha256 {actual[:12]}… does not match manifest {expected[:12]}…; "
            "rebuild with `cosmosim corpus build`"
        )
    return path
