"""What PyPI shows of the package: the README as the project page, and the project's metadata."""

from __future__ import annotations

import re
from importlib.metadata import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REPOSITORY = "https://github.com/gatewayz/gatewayz-metrics"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def readme_links() -> list[str]:
    """Every Markdown link target of the README."""
    return LINK.findall(README.read_text(encoding="utf-8"))


def test_readme_links_are_absolute() -> None:
    """PyPI renders the README away from the repository: a relative link would be dead there."""
    links = readme_links()
    assert links, "the README has no links: is the pattern broken?"
    relative = [link for link in links if not re.match(r"https?://|#", link)]
    assert relative == []


@pytest.mark.parametrize(
    "link",
    sorted({link for link in readme_links() if link.startswith(f"{REPOSITORY}/")}),
)
def test_readme_links_into_the_repository_name_files_that_exist(link: str) -> None:
    """Each link to the repository's main branch points at a file or directory that exists."""
    match = re.fullmatch(rf"{re.escape(REPOSITORY)}/(?:blob|tree)/main/([^#]+)(#.*)?", link)
    assert match is not None, f"{link} is not a blob/ or tree/ link into main"
    assert (ROOT / match.group(1)).exists(), link


def test_project_urls_name_every_page_a_user_looks_for() -> None:
    """The installed metadata (what PyPI lists) has Homepage, Source, Documentation, Issues and
    Changelog, each on the repository."""
    urls = dict(
        entry.split(", ", 1) for entry in metadata("gatewayz-metrics").get_all("Project-URL") or []
    )
    assert set(urls) >= {"Homepage", "Source", "Documentation", "Issues", "Changelog"}
    assert all(url.startswith(REPOSITORY) for url in urls.values()), urls


def test_no_extra_needs_files_outside_the_wheel() -> None:
    """The extras are the repository's own (test, lint, dev) and `otel`, which only brings
    `opentelemetry-api` for exemplars: no extra promises something (a demo) that only a clone
    of the repository has."""
    extras = set(metadata("gatewayz-metrics").get_all("Provides-Extra") or [])
    assert extras == {"test", "lint", "dev", "otel"}
    otel = [
        requirement
        for requirement in metadata("gatewayz-metrics").get_all("Requires-Dist") or []
        if requirement.replace("'", '"').endswith('extra == "otel"')
    ]
    assert [requirement.split(";")[0].strip() for requirement in otel] == [
        "opentelemetry-api>=1.20"
    ]
