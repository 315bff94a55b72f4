"""The README's Python examples run as they are written (doctest), and the files it names exist."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import echo_forcing

ROOT = Path(echo_forcing.__file__).parent
README = ROOT / "README.md"


def test_readme_python_examples_run():
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15, "the README's doctests were not found"
    assert result.failed == 0


def test_docs_name_only_files_that_exist():
    """Every repository path a document names (``docs/X.md``, ``workflows/api/x.json``, ``web/x.js``...) exists.

    docs/BASELINES.md describes the baselines' own repositories, whose files it names (``pipeline/...``); there
    only its links are checked."""
    documents = [README, *ROOT.glob("docs/*.md"), ROOT / "web" / "README.md", ROOT / "workflows" / "README.md"]
    mention = re.compile(r"(?<![\w/.-])((?:docs|workflows|web|bench|cli|memory|models|pipeline|nodes|batch|tests)"
                         r"/[\w./-]*\.(?:md|json|js|py|png|svg|txt))")
    link = re.compile(r"\]\((?!https?:|#)([^)#\s]+)")
    missing = []
    for doc in documents:
        text = doc.read_text(encoding="utf-8")
        named = set(link.findall(text)) | (set() if doc.name == "BASELINES.md" else set(mention.findall(text)))
        missing += [f"{doc.relative_to(ROOT)}: {path}" for path in sorted(named)
                    if not (doc.parent / path).exists() and not (ROOT / path).exists()]
    assert missing == []


def test_code_and_docs_cite_no_documents_outside_the_repository():
    """The design notes the pack was planned with are not shipped; nothing may send a reader to them."""
    names = ("SP" + "EC", "DES" + "IGN", "COMF" + "YUI", "design" + " card")  # spelled apart: this file cites none
    cited = re.compile(rf"\b(?:{names[0]}|{names[1]}) §|\b(?:{'|'.join(names[:3])})\.md\b|{names[3]}")
    files = [p for pattern in ("**/*.py", "**/*.md", "web/*.js") for p in ROOT.glob(pattern)
             if not any(part.startswith(".") or part in ("build", "dist") or part.endswith(".egg-info")
                        for part in p.relative_to(ROOT).parts)]
    found = [f"{path.relative_to(ROOT)}:{number}" for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if cited.search(line)]
    assert found == []
