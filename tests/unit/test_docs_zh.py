"""The Chinese pages cannot drift from their English twins.

Every fenced block (commands, configs, sample output) of a page under docs/zh-CN/ or of
README.zh-CN.md must also be a block of its English twin: the same lines once comments
(which may be translated) are set aside. And it must pass like its twin: the YAML loads
to the same data, and an sdbridge config (or mechanism entry) is accepted or refused
alike. Relative links in the Chinese pages must point at files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdbridge.config import parse_config
from sdbridge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ZH_DOCS = REPO / "docs" / "zh-CN"
REQUIRED = [
    REPO / "README.zh-CN.md",
    ZH_DOCS / "quickstart.md",
    ZH_DOCS / "configuration.md",
    ZH_DOCS / "mechanisms" / "etcd.md",
    ZH_DOCS / "mechanisms" / "zookeeper.md",
    ZH_DOCS / "mechanisms" / "nacos.md",
    ZH_DOCS / "mechanisms" / "eureka.md",
]
PAGES = sorted({*REQUIRED, *ZH_DOCS.rglob("*.md")})
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"(^|\s)#.*$")
_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def twin(page: Path) -> Path:
    if page.name == "README.zh-CN.md":
        return REPO / "README.md"
    return REPO / "docs" / page.relative_to(ZH_DOCS)


def blocks(page: Path) -> list[tuple[str, str]]:
    """Each fenced block as (language, text), indentation of the fence removed."""
    found = []
    for match in _FENCE.finditer(page.read_text(encoding="utf-8")):
        indent = len(match.group(1))
        lines = [line[indent:] for line in match.group(3).splitlines()]
        found.append((match.group(2), "\n".join(lines)))
    return found


def normalized(text: str) -> tuple[str, ...]:
    """The block's lines without comments, trailing blanks and empty lines."""
    lines = (_COMMENT.sub("", line).rstrip() for line in text.splitlines())
    return tuple(line for line in lines if line)


def verdict(language: str, text: str, mechanism: str) -> Any:
    """What sdbridge makes of a block: the loaded YAML and, for configs, OK or the errors."""
    if language != "yaml":
        return normalized(text)
    data = yaml.safe_load(text)
    if isinstance(data, dict) and "jobs" in data:
        config: Any = data
    elif isinstance(data, dict) and any(k.endswith("_sd_configs") for k in data):
        config = {"jobs": [{"name": "doc", **data}]}
    elif isinstance(data, list) and data and all(isinstance(e, dict) for e in data):
        if "job_name" in data[0]:
            return data  # a Prometheus scrape config
        config = {"jobs": [{"name": "doc", f"{mechanism}_sd_configs": data}]}
    else:
        return data
    try:
        parse_config(config, base_dir=REPO)
    except ConfigError as exc:
        return data, "refused", len(exc.errors or [str(exc)])
    return data, "ok"


@pytest.mark.parametrize("page", REQUIRED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_chinese_page_exists_with_its_twin(page: Path) -> None:
    assert page.is_file()
    assert twin(page).is_file()
    assert re.search(r"[\u4e00-\u9fff]", page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_is_in_the_english_twin_and_passes_alike(page: Path) -> None:
    english = twin(page)
    mechanism = page.stem
    theirs: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for language, text in blocks(english):
        theirs.setdefault(normalized(text), []).append((language, text))
    ours = blocks(page)
    assert ours, f"{page} has no blocks to check"
    for language, text in ours:
        key = normalized(text)
        assert key in theirs, (
            f"{page.relative_to(REPO)}: this {language or 'plain'} block is not in "
            f"{english.relative_to(REPO)}:\n{text}"
        )
        outcomes = [verdict(lang, their, mechanism) for lang, their in theirs[key]]
        assert verdict(language, text, mechanism) in outcomes, text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target, _ in _LINK.findall(text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: broken link {target}"


def test_the_twins_link_to_each_other() -> None:
    assert "](README.zh-CN.md)" in (REPO / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        targets = {
            (page.parent / target).resolve()
            for target, _ in _LINK.findall(page.read_text(encoding="utf-8"))
        }
        assert twin(page).resolve() in targets, f"{page} does not link to its English twin"
