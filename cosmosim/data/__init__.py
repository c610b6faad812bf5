"""Text corpus, tokenizer and token batches (see docs/corpus.md)."""

from cosmosim.data.corpus import assemble_corpus, build_corpus, default_corpus_dir, read_manifest
from cosmosim.data.dataset import TokenSplit, load_split, load_tokenizer, sample_batch, sequential_windows
from cosmosim.data.sources import SOURCES, Document, Source, read_text_folder

__all__ = [
    "SOURCES",
    "Document",
    "Source",
    "TokenSplit",
    "assemble_corpus",
    "build_corpus",
    "default_corpus_dir",
    "load_split",
    "load_tokenizer",
    "read_manifest",
    "read_text_folder",
    "sample_batch",
    "sequential_windows",
]
