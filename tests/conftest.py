"""Shared fixtures."""

from pathlib import Path

import pytest

from cosmosim.data.corpus import assemble_corpus
from cosmosim.data.sources import read_text_folder

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """A corpus folder built from tests/data/sample: 4 domains, vocab 512, val/trace ~4 KB each."""
    corpus_dir = tmp_path_factory.mktemp("sample_corpus")
    assemble_corpus(
        read_text_folder(SAMPLE_DIR),
        corpus_dir,
        vocab_size=512,
        seed=0,
        holdout_fraction=0.1,
        min_holdout_chars=4_000,
        strict_vocab_range=False,
    )
    return corpus_dir
