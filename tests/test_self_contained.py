"""The project is self-contained: no code, doc, recipe or test points to a file outside the repository."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".venv-ci", "__pycache__", "build", "dist", "runs", "wandb", ".pytest_cache"}
OUTSIDE = ("DESIGN" + ".md", "ARCHITECTURE" + ".md", "../" + "shared")


def project_files():
    for path in ROOT.rglob("*"):
        if path.is_file() and path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"} and \
                not SKIP_DIRS & set(parts := path.relative_to(ROOT).parts) and \
                not any(part.endswith(".egg-info") for part in parts):
            yield path


def test_nothing_points_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in project_files()
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if any(word in line for word in OUTSIDE)]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_docs_links_resolve():
    import re

    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)
