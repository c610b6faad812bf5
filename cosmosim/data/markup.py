"""Markup → plain prose, one pure function per source format.

Each source ships its text in its own markup (Project Gutenberg boilerplate, OSIS XML inside a
SWORD module, Sphinx reStructuredText). These functions keep the running prose and drop what a
language model should not learn from: licence text, footnotes, code samples, tables, link targets.
They take and return `str`, so they are tested on small literal snippets without any package.
"""

import html
import re

# --- shared ---------------------------------------------------------------------------------


def normalize_whitespace(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, one final newline.

    Paragraphs are separated by exactly one blank line afterwards, which is what the corpus
    chunker splits on.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def reflow_paragraphs(text: str) -> str:
    """Join hard-wrapped lines into one line per paragraph (for prose printed at 70 columns)."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs) + "\n"


# --- Project Gutenberg ----------------------------------------------------------------------

# Modern etexts bracket the book with "*** START/END OF THE PROJECT GUTENBERG EBOOK ... ***";
# the 1990s etexts end their licence with "*END*THE SMALL PRINT!..." and close with "End of ...".
_GUTENBERG_START = re.compile(
    r"^(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$",
    re.M | re.I,
)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg etext, without its header and licence."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return normalize_whitespace(text)


# --- OSIS (SWORD module exported by mod2imp) ------------------------------------------------

_IMP_KEY = re.compile(r"^\$\$\$(?P<book>.+?) (?P<chapter>\d+):(?P<verse>\d+)$")
# Footnotes and headings go; one that sits between two words leaves a space behind.
_OSIS_DROPPED = re.compile(r"<(note|title)\b[^>]*>.*?</\1>(?P<word_follows>(?=<w\b|\w))?", re.S)
_OSIS_PARAGRAPH = re.compile(r'<(div|lb|lg)\b[^>]*type="x-p"[^>]*/>|<lg\b[^>]*/>')
_OSIS_POETRY_LINE = re.compile(r"<l\b[^>]*\bsID=[^>]*/>")
_XML_TAG = re.compile(r"<[^>]+>")


def osis_verse_to_text(osis: str) -> str:
    """One verse's OSIS markup as plain text; paragraph and poetry breaks become newlines."""
    osis = _OSIS_DROPPED.sub(lambda m: " " if m["word_follows"] is not None else "", osis)
    osis = _OSIS_PARAGRAPH.sub("\n\n", osis)
    osis = _OSIS_POETRY_LINE.sub("\n", osis)
    return re.sub(r"[ \t]+", " ", html.unescape(_XML_TAG.sub("", osis)))


def imp_to_books(imp: str) -> list[tuple[str, str]]:
    """(book, text) for every book in a mod2imp export, verses only (no prefaces, no headings).

    mod2imp writes one record per key: a `$$$Book chapter:verse` line, then the entry's markup.
    Chapter 0 and verse 0 hold introductions and titles, which are not verse prose.
    """
    books: dict[str, list[str]] = {}
    key: re.Match | None = None
    for record in imp.split("\n$$$"):
        header, _, body = ("$$$" + record.lstrip("$")).partition("\n")
        key = _IMP_KEY.match(header)
        if key is None or int(key["chapter"]) == 0 or int(key["verse"]) == 0:
            continue
        verses = books.setdefault(key["book"], [])
        if int(key["verse"]) == 1 and verses:
            verses.append("\n\n")  # a new chapter starts a new paragraph
        verses.append(osis_verse_to_text(body))
    return [(book, _tidy_spaces(" ".join(parts))) for book, parts in books.items()]


def _tidy_spaces(text: str) -> str:
    """Single spaces inside lines, none at either end of a line."""
    text = re.sub(r"[ \t]+", " ", text)
    return normalize_whitespace(re.sub(r" ?\n ?", "\n", text))


# --- reStructuredText (Sphinx sources of the Python docs) -----------------------------------

# Directives whose body is prose (API descriptions, admonitions, version notes): the directive
# line goes, its indented body stays. Every other directive (code, tables, toctrees, indexes,
# includes, the generated changelog) is dropped with its body.
_PROSE_DIRECTIVES = {
    "abstractmethod", "admonition", "attention", "attribute", "awaitablefunction", "caution",
    "class", "classmethod", "cmdoption", "coroutinefunction", "coroutinemethod", "danger",
    "data", "decorator", "decoratormethod", "deprecated", "deprecated-removed", "describe",
    "envvar", "epigraph", "error", "exception", "function", "glossary", "hint", "impl-detail",
    "important", "method", "note", "object", "opcode", "option", "pdbcommand", "seealso",
    "sidebar", "staticmethod", "tip", "topic", "versionadded", "versionchanged", "warning",
}
_DIRECTIVE = re.compile(r"^\s*\.\.\s+(?P<name>[\w:-]+)::")
_FIELD_LINE = re.compile(r"^\s*:[\w -]+:(\s|$)")  # directive options such as `:noindex:`
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_:.<>])\1{3,}$|^=+( +=+)+$|^\+[-=+]+\+$")
_TABLE_ROW = re.compile(r"^\|.*\|$")
_LIST_ITEM = re.compile(r"^([-*+•]|#\.|\d+\.|\(?[a-z0-9]\))\s")

# Inline markup, scanned left to right so that ``*args`` is a literal, not emphasis.
_INLINE = re.compile(
    r"``(?P<literal>.+?)``"
    r"|(?P<rfc>:(?:pep|rfc):)`(?P<number>\d+)`"
    r"|(?::[\w-]+)+:`(?P<role>[^`]+)`"
    r"|`(?P<link>[^`]+)`_{0,2}"
    r"|\*\*(?P<strong>[^*]+)\*\*"
    r"|(?<![\w*\\])\*(?P<emphasis>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|\s?\[(?:#\w*|\d+|\*)\]_"  # footnote references vanish
    r"|\|(?P<substitution>\w[\w -]*)\|"
    r"|\\(?P<escaped>.)"
)
_EXPLICIT_TARGET = re.compile(r"^(?P<text>.*?)\s*<[^<>]+>$", re.S)


def _inline_to_text(match: re.Match) -> str:
    kind = match.lastgroup
    if kind is None:
        return ""
    if kind == "number":  # :pep:`8` is shown as "PEP 8"
        return match["rfc"].strip(":").upper() + " " + match["number"]
    value = match[kind]
    if kind in ("role", "link"):
        titled = _EXPLICIT_TARGET.match(value)
        if titled and titled["text"]:
            return titled["text"]
        if value.startswith("~"):  # :func:`~os.path.join` is shown as `join`
            return value[1:].rsplit(".", 1)[-1]
        return value.lstrip("!")
    if kind == "escaped":
        return "" if value == " " else value
    return value


def _paragraph_to_text(lines: list[str]) -> str:
    """Join a paragraph's lines, keeping list items on lines of their own."""
    joined: list[str] = []
    for line in lines:
        if joined and not _LIST_ITEM.match(line):
            joined[-1] += " " + line
        else:
            joined.append(line)
    return "\n".join(" ".join(_INLINE.sub(_inline_to_text, line).split()) for line in joined)


def rst_to_prose(rst: str) -> str:
    """The running prose of a reST document: titles, paragraphs, list items, API descriptions."""
    paragraphs: list[list[str]] = [[]]
    skip_deeper_than: int | None = None  # dropping a block: every line indented past this
    skip_to_blank = False  # dropping a doctest block, which ends at the next blank line
    for raw in rst.splitlines():
        line = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if skip_to_blank:
            skip_to_blank = bool(line)
            continue
        if skip_deeper_than is not None:
            if not line or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
            paragraphs.append([])
        if not line:
            paragraphs.append([])
            continue
        directive = _DIRECTIVE.match(raw)
        if directive and directive["name"].removeprefix("c:") in _PROSE_DIRECTIVES:
            paragraphs.append([])
        elif directive or line.startswith(".."):  # other directive, comment or link target
            skip_deeper_than = indent
        elif line.startswith(">>>"):
            skip_to_blank = True
        elif not (_FIELD_LINE.match(line) or _ADORNMENT.match(line) or _TABLE_ROW.match(line)):
            if line.endswith("::"):  # the next indented block is a literal (code) block
                skip_deeper_than = indent
                # reST shows "text::" as "text:", and "text ::" or a lone "::" as nothing
                body = line[:-2]
                line = body + ":" if body and not body.endswith(" ") else body.rstrip()
            if line:
                paragraphs[-1].append(line)
    text = "\n\n".join(_paragraph_to_text(p) for p in paragraphs if p)
    return normalize_whitespace(text)
