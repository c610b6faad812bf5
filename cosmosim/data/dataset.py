"""Token splits of a built corpus: encode once, cache, then cut training batches and trace windows.

A split is every domain's text of that split encoded and laid end to end, one domain after the
other, with a parallel array saying which domain each token came from. Batches and windows never
cross a domain boundary, so a window is always one kind of text.
"""

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from cosmosim.data.corpus import MANIFEST_FILE, SPLITS, TOKENIZER_FILE, read_manifest, verify_file
from cosmosim.errors import InputError
from cosmosim.files import atomic_write_bytes
from cosmosim.provenance import sha256_file


@dataclass(frozen=True)
class TokenSplit:
    tokens: np.ndarray  # int32 [N], all domains concatenated, one domain after another
    domains: np.ndarray  # int8 [N], index into domain_names
    domain_names: list[str]
    vocab_size: int
    name: str = "unnamed"  # the split's name, for error messages

    def __post_init__(self) -> None:
        if not self.domain_names:
            raise InputError(f"split {self.name}: domain_names is empty; expected at least one domain")
        if self.tokens.dtype != np.int32 or self.domains.dtype != np.int8:
            raise InputError(f"split {self.name}: tokens must be int32 and domains int8")
        if self.tokens.ndim != 1 or self.tokens.shape != self.domains.shape:
            raise InputError(f"split {self.name}: tokens and domains must be 1-D arrays of one length")
        ascending = not np.any(np.diff(self.domains) < 0)
        in_range = self.domains.size == 0 or 0 <= self.domains[0] <= self.domains[-1] < len(self.domain_names)
        if not (ascending and in_range):
            raise InputError(f"split {self.name}: domains must be contiguous, ascending ids into domain_names")

    def domain_spans(self) -> list[tuple[int, int]]:
        """[start, end) of each domain's tokens, indexed like domain_names (empty where absent)."""
        ids = np.arange(len(self.domain_names))
        starts = np.searchsorted(self.domains, ids, side="left")
        ends = np.searchsorted(self.domains, ids, side="right")
        return list(zip(starts.tolist(), ends.tolist()))


def load_tokenizer(corpus_dir: Path) -> Tokenizer:
    """The corpus tokenizer, after checking it is the one the manifest lists."""
    manifest = read_manifest(corpus_dir)
    return Tokenizer.from_file(str(verify_file(corpus_dir, manifest, TOKENIZER_FILE)))


# Cut points for parallel encoding: after a lone newline that follows text, before more text.
# Byte-level BPE pre-tokenizes with the GPT-2 pattern, which always ends a pre-token at such a
# point, so encoding the pieces gives exactly the tokens of encoding the whole text.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def encode_text(tokenizer: Tokenizer, text: str, piece_chars: int = 1 << 16) -> np.ndarray:
    """Token ids (int32) of a long text, encoded in parallel pieces of about `piece_chars`."""
    pieces, start = [], 0
    while start < len(text):
        cut = _SAFE_CUT.search(text, start + piece_chars)
        end = cut.start() if cut else len(text)
        pieces.append(text[start:end])
        start = end
    encodings = tokenizer.encode_batch(pieces, add_special_tokens=False)
    return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32)


def load_split(corpus_dir: Path, split: str) -> TokenSplit:
    """A split's tokens, from `{corpus}/cache/{split}.npz` when that matches the manifest."""
    corpus_dir = Path(corpus_dir)
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    manifest = read_manifest(corpus_dir)
    domain_names = list(manifest["domains"])
    paths = [verify_file(corpus_dir, manifest, f"{split}/{domain}.txt") for domain in domain_names]
    tokenizer = load_tokenizer(corpus_dir)
    # The manifest lists every file's sha256, so its own hash identifies text and tokenizer.
    manifest_sha256 = sha256_file(corpus_dir / MANIFEST_FILE)
    cache_path = corpus_dir / "cache" / f"{split}.npz"
    cached = _read_cache(cache_path, manifest_sha256)
    if cached is None:
        encoded = [encode_text(tokenizer, p.read_text("utf-8")) for p in tqdm(paths, desc=f"encode {split}")]
        tokens = np.concatenate(encoded)
        domains = np.repeat(np.arange(len(encoded), dtype=np.int8), [len(e) for e in encoded])
        _write_cache(cache_path, tokens, domains, manifest_sha256)
    else:
        tokens, domains = cached
    return TokenSplit(tokens, domains, domain_names, tokenizer.get_vocab_size(), name=split)


def _read_cache(path: Path, manifest_sha256: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (tokens, domains), or None when missing, unreadable or from another manifest."""
    try:
        cache = np.load(path, allow_pickle=False)
        if not isinstance(cache, np.lib.npyio.NpzFile):
            return None
        with cache:
            if str(cache["manifest_sha256"]) != manifest_sha256:
                return None
            return cache["tokens"], cache["domains"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # a stale or broken cache is rebuilt, not reported


def _write_cache(path: Path, tokens: np.ndarray, domains: np.ndarray, manifest_sha256: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, tokens=tokens, domains=domains, manifest_sha256=np.array(manifest_sha256))
    atomic_write_bytes(path, buffer.getvalue())


def sample_batch(
    split: TokenSplit, batch_size: int, seq_len: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x, y = tokens[s : s+T], tokens[s+1 : s+T+1] (int64 [B, T]), each in one domain.

    Start positions are drawn uniformly over all positions whose window fits inside its domain,
    so domains are sampled in proportion to their size. The same rng state gives the same batch.
    """
    if batch_size < 1 or seq_len < 1:
        raise InputError(f"batch_size {batch_size}, seq_len {seq_len}: expected positive integers")
    spans = split.domain_spans()
    # A domain of n tokens holds n - seq_len windows of seq_len + 1 tokens (input plus target).
    counts = np.array([max(0, end - start - seq_len) for start, end in spans])
    if counts.sum() == 0:
        longest = max(end - start for start, end in spans)
        raise InputError(
            f"split {split.name}: seq_len {seq_len} needs a domain of more than {seq_len} tokens; "
            f"the longest has {longest}"
        )
    picks = rng.integers(counts.sum(), size=batch_size)
    domain_of_pick = np.searchsorted(np.cumsum(counts), picks, side="right")
    first_start = np.array([start for start, _ in spans])
    starts = first_start[domain_of_pick] + picks - (np.cumsum(counts) - counts)[domain_of_pick]
    windows = split.tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)
    return torch.from_numpy(windows[:, :-1].copy()), torch.from_numpy(windows[:, 1:].copy())


def sequential_windows(
    split: TokenSplit, seq_len: int, max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows (int64 [N, seq_len]) and their domain ids (int8 [N]).

    Each domain is cut from its start into whole windows; the windows are then dealt round-robin
    (window 0 of every domain, then window 1 of every domain, ...), so any prefix of the result
    covers every domain. `max_tokens` keeps the first max_tokens // seq_len windows.
    """
    if seq_len < 1:
        raise InputError(f"seq_len {seq_len}: expected a positive integer")
    spans = split.domain_spans()
    per_domain = [(end - start) // seq_len for start, end in spans]
    available_tokens = sum(per_domain) * seq_len
    if max_tokens is not None and not seq_len <= max_tokens <= available_tokens:
        raise InputError(
            f"max_tokens {max_tokens}: split {split.name} holds {available_tokens} tokens in windows of "
            f"{seq_len} ({split.tokens.size} tokens in all); expected {seq_len}–{available_tokens}"
        )
    # Order every window by (its index within its domain, domain id): that is round-robin.
    window_index = np.concatenate([np.arange(n) for n in per_domain])
    domain_ids = np.repeat(np.arange(len(spans)), per_domain)
    order = np.lexsort((domain_ids, window_index))
    if max_tokens is not None:
        order = order[: max_tokens // seq_len]
    first_start = np.array([start for start, _ in spans], dtype=np.int64)
    starts = first_start[domain_ids[order]] + window_index[order] * seq_len
    windows = split.tokens[starts[:, None] + np.arange(seq_len)].astype(np.int64)
    return windows, domain_ids[order].astype(np.int8)
