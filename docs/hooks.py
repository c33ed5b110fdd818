"""mkdocs hooks: the spec reference generated from the code
(:func:`phasevae.spec.reference.reference_markdown`), and the committed results (their
Markdown tables and figures) published beside the pages, at results/..."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- spec-reference"


def on_files(files, config):
    for path in sorted((ROOT / "results").rglob("*")):
        if path.suffix in (".md", ".png") and "checkpoints" not in path.parts:
            uri = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if MARK in markdown:
        from phasevae.spec.reference import reference_markdown

        markdown = markdown.split(MARK)[0] + reference_markdown()
    return markdown
