"""The repository is written for a user who clones it.

Every tracked text file (code, docs, configs, benchmarks, tests; `git ls-files`) is scanned for
four things that only make sense on the machine or in the notes of the people who wrote it:

1. an absolute path of one machine: a path that starts at one of the roots in `MACHINE_ROOTS`
   (a home or working directory, a temporary or mounted disk). Examples and docs use a
   placeholder (`DIR`, `RUN`) or a path relative to the repository instead; `~/.cache/...`
   (a tool's documented default location) and `/dev/null` are not machine-specific and pass;
2. first-person narration (`I measured`, `my run`, `we read`, `our code`) in prose: in Markdown
   and YAML text, and in Python comments and docstrings. Python code is not prose, so a variable
   named `ours` or `mine` passes; so does text inside backticks or quotes, where a capital `I`
   is usually a symbol (an identity image, a PIL mode);
3. a reference to an issue or pull-request number (the word issue or PR followed by a number, or a
   hash sign followed by a number);
4. a citation of the team's notes, which are not in the repository (the references file and
   the design notes in upper case, a `shared` folder): cite `docs/references.md` instead.

The patterns below are assembled from pieces so that this file passes its own scan. Every
offence is reported as `file:line: what: text`, all files at once.
"""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# roots of one machine's file tree: a user's home, a shared work or scratch disk, temporary and
# mounted disks, and the same on macOS and Windows
MACHINE_ROOTS = ["wo" "rk", "ro" "ot", "ho" "me", "Us" "ers", "t" "mp", "m" "nt", "scra" "tch"]
ABSOLUTE_PATH = re.compile(r"(?<![\w.~$:/-])/(?:" + "|".join(MACHINE_ROOTS) + r")/[\w.$<{-]"
                           r"|\b[A-Z]:\\" "Us" r"ers\\", re.IGNORECASE)

# first-person pronouns, as words; a capital `I` only before a verb-like lower-case word or a
# contraction, so that `I - B` (an image) and `"I;16"` (a PIL mode) are not narration
_PRONOUNS = ["m" "y", "m" "e", "mi" "ne", "mys" "elf", "w" "e", "u" "s", "o" "ur", "ou" "rs", "ourse" "lves"]
FIRST_PERSON = re.compile(r"\b(?:" + "|".join(_PRONOUNS) + r")\b(?!['/-]\w)|(?-i:\bI(?:'(?:m|ve|d|ll)\b|\s+[a-z]{2,}\b))",
                          re.IGNORECASE)

ISSUE_NUMBER = re.compile(r"\b(?:iss" r"ues?|P" r"Rs?|pull requests?)\s*#?\s*\d+\b|(?<![\w&#/\"'])#\d+\b", re.IGNORECASE)

TEAM_NOTES = re.compile(r"\b(?:REF" r"ERENCES|DES" r"IGN)(?:\.md)?\b|\.\./sh" r"ared\b|\bsh" r"ared/")

# text inside backticks or quotes is a name, a symbol or a value, not narration
_QUOTED = re.compile(r"``[^`]*``|`[^`]*`|\"[^\"\n]*\"|(?<!\w)'[^'\n]*'(?!\w)")

TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".sh", ""}


def tracked_text_files() -> list[Path]:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = proc.stdout
    files = []
    for name in out.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix in TEXT_SUFFIXES:
            data = path.read_bytes()
            if b"\0" not in data[:4096]:
                files.append(path)
    return files


def python_prose(source: str) -> dict[int, str]:
    """Comments and docstrings of a Python file, by line number (other strings are values)."""
    prose: dict[int, list[str]] = {}
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        is_docstring = (tok.type == tokenize.STRING and
                        (i == 0 or tokens[i - 1].type in (tokenize.INDENT, tokenize.NEWLINE, tokenize.NL, tokenize.DEDENT)))
        if tok.type == tokenize.COMMENT or is_docstring:
            for offset, text in enumerate(tok.string.splitlines()):
                prose.setdefault(tok.start[0] + offset, []).append(text)
    return {line: " ".join(parts) for line, parts in prose.items()}


def offences(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if path.suffix == ".py":
        try:
            prose = python_prose(text)
        except (tokenize.TokenError, SyntaxError, IndentationError):
            prose = dict(enumerate(lines, 1))
    elif path.suffix == ".json":
        prose = {}  # data (run records): only paths and references are checked
    else:
        prose = dict(enumerate(lines, 1))
    found = []
    for number, line in enumerate(lines, 1):
        for what, pattern in (("absolute path of one machine", ABSOLUTE_PATH),
                              ("issue number", ISSUE_NUMBER),
                              ("the team's notes (cite docs/references.md)", TEAM_NOTES)):
            if pattern.search(line):
                found.append(f"{rel}:{number}: {what}: {line.strip()[:160]}")
        if number in prose:
            unquoted = _QUOTED.sub(" ", prose[number])
            if FIRST_PERSON.search(unquoted):
                found.append(f"{rel}:{number}: first person: {line.strip()[:160]}")
    return found


def test_the_scan_catches_what_it_looks_for():
    """Hand-made lines: each pattern fires on what it is for, and not on look-alikes."""
    slash = "/"
    assert ABSOLUTE_PATH.search(f"ckpt_path={slash}wo" f"rk{slash}runs/default/last.ckpt")
    assert ABSOLUTE_PATH.search(f"copied to {slash}t" f"mp{slash}x.ckpt")
    assert ABSOLUTE_PATH.search(f"{slash}ho" f"me{slash}alice/data")
    assert not ABSOLUTE_PATH.search("~/.cache/torch/hub/checkpoints and /dev/null and outputs/train/run")
    assert not ABSOLUTE_PATH.search(f"glimpse{slash}data{slash}coco.py")  # relative
    assert FIRST_PERSON.search("the run " "I" " measured")
    assert FIRST_PERSON.search("W" "e measured it twice")
    assert FIRST_PERSON.search("the other core busy with m" "y work")
    assert not FIRST_PERSON.search(_QUOTED.sub(" ", "a mode `" "I" "` and (I - B) and \"I;16\""))
    assert not FIRST_PERSON.search(_QUOTED.sub(" ", "row ``i`` of ``episode``; env i draws")) and not FIRST_PERSON.search("I/O")
    assert not FIRST_PERSON.search("museum, focus, status, mean, welcome, measure, Ourense")
    assert ISSUE_NUMBER.search("the goal of iss" "ue 4") and ISSUE_NUMBER.search("see #" "12")
    assert not ISSUE_NUMBER.search("#SBATCH --nodes=2") and not ISSUE_NUMBER.search("colour '#1f77b4'")
    assert not ISSUE_NUMBER.search('color="#000000"') and not ISSUE_NUMBER.search("&#8212;")
    assert TEAM_NOTES.search("formulas in REF" "ERENCES.md") and TEAM_NOTES.search("../sh" "ared/x")
    assert not TEAM_NOTES.search("docs/references.md")
    assert python_prose("x = 1  # a comment\ns = 'not prose'\n") == {1: "# a comment"}


def test_no_machine_paths_first_person_issue_numbers_or_team_notes():
    files = tracked_text_files()
    assert any(f.name == "README.md" for f in files) and any(f.suffix == ".py" for f in files)
    found = [line for path in files for line in offences(path)]
    if found:
        pytest.fail(f"{len(found)} offending line(s):\n" + "\n".join(found), pytrace=False)
