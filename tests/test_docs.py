"""The README as a user reads it: short, in a user's order (install, `vpt train` on their own folder, predict,
the Python API, other libraries, then links), the two fresh-machine commands CI and users copy, and links
into docs/ that lead somewhere."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
QUICKSTART = ('pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[bench]" && '
              'python benchmarks/quickstart.py')
TESTS = 'pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test]" && python -m pytest -q'


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def pages():
    docs = os.path.join(ROOT, "docs")
    return [README] + sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


def fenced_blocks(text):
    return [b.strip("\n") for b in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)]


def headings(text):
    """GitHub's anchors for a page's headings (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    out = set()
    for title in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


def test_readme_is_short_and_its_tables_fit_a_screen():
    text = read(README)
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/ (at most 200)"
    wide = [(i + 1, len(line)) for i, line in enumerate(lines) if line.startswith("|") and len(line) > 200]
    assert not wide, f"README table rows over 200 characters (line, length): {wide}"
    assert "<!-- transfer-" not in text, "generated tables belong in docs/results.md or benchmarks/README.md"


def test_readme_keeps_the_fresh_machine_commands_in_their_own_blocks():
    blocks = fenced_blocks(read(README))
    assert QUICKSTART in blocks and TESTS in blocks
    assert TESTS in read(os.path.join(ROOT, ".ci", "run"))  # CI runs exactly the README's test command
    assert '-m "not slow"' in read(README)


def test_readme_follows_a_users_order():
    text = read(README)
    order = ["## Install", "## Train on your own images", "## Predict and evaluate", "## Python API",
             "## Other libraries", "## Documentation"]
    at = [text.find(h) for h in order]
    assert -1 not in at and at == sorted(at), dict(zip(order, at))
    first_command = next(b for b in fenced_blocks(text) if "vpt " in b)
    assert first_command.startswith("vpt train --data "), first_command  # the user's own folder, no recipe needed


@pytest.mark.parametrize("page", pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_lead_somewhere(page):
    text = re.sub(r"^```.*?^```", "", read(page), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(full):
            broken.append(f"{target} (no file {os.path.relpath(full, ROOT)})")
        elif anchor and full.endswith(".md") and anchor not in headings(read(full)):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{os.path.relpath(page, ROOT)}: broken links: {broken}"


def test_readme_links_every_docs_page():
    text = read(README)
    missing = [os.path.relpath(p, ROOT) for p in pages()[1:] if f"]({os.path.relpath(p, ROOT)})" not in text]
    assert not missing, f"docs pages the README does not link: {missing}"


def commands(path):
    """The `vpt ...` command lines of a page's shell blocks, comments cut."""
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", read(path), flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#", line, maxsplit=1)[0].strip()
            line = re.sub(r"\$\w+", "1", line)  # a loop variable (seeds) stands for a number
            if line.startswith("vpt "):
                out.append(line)
    return out


@pytest.mark.parametrize("page", ["README.md", "docs/clip.md", "docs/benchmarks.md"])
def test_documented_commands_parse(page):
    """Every `vpt` command the README and the CLIP page show is one the CLI accepts (flags, subcommands,
    positionals), so the page and `--help` cannot drift apart."""
    import shlex
    from vpt.cli import build_parser
    lines = commands(os.path.join(ROOT, page))
    assert lines
    refused = []
    for line in lines:
        try:
            build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            refused.append(line)
    assert not refused, f"{page}: commands the CLI refuses: {refused}"
