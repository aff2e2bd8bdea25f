"""The documentation: the README a newcomer reads, the site built strictly, its generated pages
fresh and complete, and the Snakemake workflow catalog's conventions (config/README.md, the usage
file, snakefmt and --lint clean)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from medtune import docs, plan
from medtune.registry import package_modules, read_spec

BIN = Path(sys.executable).parent
README = REPO / "README.md"
CONFIG_PAGE = REPO / "docs" / "configuration.md"


def _run(*cmd, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env)


def _reference_keys() -> set[str]:
    """The full keys of the configuration reference: each table's key column, under the prefix its
    header names (`datasets.<dataset>.`), or as it stands under a header `key`."""
    keys, prefix = set(), None
    for line in CONFIG_PAGE.read_text().splitlines():
        if header := re.match(r"^\| (?:`([^`]*\.)`|key) \| type \|", line):
            prefix = header[1] or ""
        elif line.startswith("|") and prefix is not None and (row := re.match(r"^\| `([^`]+)` \|", line)):
            keys.add(prefix + row[1])
        elif not line.startswith("|"):
            prefix = None
    return keys


def _schema_property_names(node, found=None) -> set[str]:
    """Every property name anywhere in the raw schema file, $defs included."""
    found = set() if found is None else found
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            found.add(name)
            _schema_property_names(child, found)
        for key in ("additionalProperties", "items", "$defs"):
            value = node.get(key)
            children = value.values() if key == "$defs" and isinstance(value, dict) else [value]
            for child in children:
                _schema_property_names(child, found)
    return found


# -- README ----------------------------------------------------------------------------------


def test_readme_is_short_with_the_two_commands_and_their_times_first():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    head = "\n".join(lines[:30])
    for command in ("make run", "make test"):
        assert re.search(rf"^{command}\b", head, re.M), command  # in the code block
        assert re.search(rf"\| `{command}` \| \*\*[\d.]+ min\*\*", head), f"{command}: no measured time in the first 30 lines"


def _readme_links() -> list[str]:
    return re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())


def test_readme_links_point_at_files_that_exist():
    for target in _readme_links():
        assert target.endswith(".png") or (REPO / target).is_file(), target


def test_readme_shows_a_committed_figure_of_the_default():
    figures = [t for t in _readme_links() if t.endswith(".png")]
    assert figures, "the README shows no figure"
    for figure in figures:
        assert (REPO / figure).is_file(), f"{figure}: copy the default run's results/figures/clipath_accuracy.png there"


# -- the site --------------------------------------------------------------------------------


def test_site_builds_strictly_offline(tmp_path):
    """Broken links and anchors, pages missing from nav and theme warnings all fail --strict."""
    result = _run(BIN / "mkdocs", "build", "--strict", "--site-dir", tmp_path / "site")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    index = (tmp_path / "site" / "index.html").read_text()
    # font: false, and nothing else fetched from outside: a page opens without a network
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index
    assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"https?://", index)


# -- the generated pages ---------------------------------------------------------------------


def test_generated_pages_equal_a_fresh_generation():
    assert docs.stale() == [], "run make docs"


def test_configuration_reference_names_every_key_of_the_schema_file():
    schema = yaml.safe_load((REPO / "config" / "schema" / "config.schema.yaml").read_text())
    last_parts = {key.rsplit(".", 1)[-1] for key in _reference_keys()}
    missing = sorted(_schema_property_names(schema) - last_parts)
    assert not missing, missing
    # the top-level keys by their own name, the study keys under studies.<study>
    keys = _reference_keys()
    assert set(schema["properties"]) <= keys
    assert {f"studies.<study>.{k}" for k in schema["$defs"]["study"]["properties"]} <= keys


def test_configuration_reference_names_every_method_parameter_and_study():
    keys = _reference_keys()
    text = CONFIG_PAGE.read_text()
    for module in package_modules(REPO / "src" / "medtune" / "methods"):
        spec = read_spec(module)
        if spec is None:
            continue
        for param, declared in spec.get("params", {}).items():
            assert f"methods.{module.stem}.{param}" in keys, (module.stem, param)
            if param in spec.get("defaults", {}):
                section = text.split(f"### methods.{module.stem} ", 1)[1].split("\n#", 1)[0]
                row = next(line for line in section.splitlines() if line.startswith(f"| `{param}` |"))
                assert row.split(" | ")[2] == docs._code(docs._value(spec["defaults"][param])), row
    for module in package_modules(REPO / "src" / "medtune" / "studies"):
        if read_spec(module) is not None:
            assert f"`{module.stem}`" in text, module.stem


def test_every_key_in_the_reference_has_a_description():
    undescribed = [row.split(" | ")[0] for row in CONFIG_PAGE.read_text().splitlines()
                   if row.startswith("| `") and row.rstrip().endswith("|  |")]
    assert not undescribed, undescribed


def test_types_in_words():
    schema = {"$defs": {"n": {"type": "integer", "minimum": 1}}}
    assert docs.type_of({"type": "number", "exclusiveMinimum": 0, "maximum": 100}, schema) == "number in (0, 100]"
    assert docs.type_of({"type": "integer", "minimum": 0}, schema) == "integer ≥ 0"
    assert docs.type_of({"$ref": "#/$defs/n"}, schema) == "integer ≥ 1"
    assert docs.type_of({"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}, schema) == "list of number, 2 items"
    assert docs.type_of({"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True}, schema) == (
        "list of string, at least 1, distinct")
    assert docs.type_of({"enum": ["a", None]}, schema) == "one of `a`, `null`"
    assert docs.type_of({"type": ["string", "null"]}, schema) == "string or null"
    assert docs.type_of({"type": "object", "additionalProperties": {"type": "string"}}, schema) == "mapping to string"
    assert docs.type_of({"type": "string", "pattern": "^(a|b)$"}, schema) == "string matching `^(a|b)$`"


def test_a_table_cell_escapes_borders_and_tags_outside_code():
    assert docs._text("a | b <name>\n  c `x|<y>`") == r"a \| b &lt;name> c `x|<y>`"


def _docs_copy(tmp_path) -> Path:
    copy = tmp_path / "docs"
    shutil.copytree(REPO / "docs", copy)
    return copy


def test_a_hand_edited_generated_region_is_stale(tmp_path):
    copy = _docs_copy(tmp_path)
    page = copy / "methods" / "adapters.md"
    page.write_text(page.read_text().replace("| `epochs` |", "| `epoch` |", 1))
    assert docs.stale(copy) == [page]
    assert docs.main(["--check", "--docs-dir", str(copy)]) == 1
    assert docs.main(["--docs-dir", str(copy)]) == 0 and docs.stale(copy) == []


def test_a_method_without_a_page_is_refused_naming_it(tmp_path):
    copy = _docs_copy(tmp_path)
    page = copy / "methods" / "probes.md"
    page.write_text(re.sub(r"<!-- generated: defaults knn -->.*?<!-- end generated -->", "", page.read_text(), flags=re.S))
    with pytest.raises(docs.DocsError, match=r"method 'knn' has no page"):
        docs.generate(copy)


# -- the Snakemake workflow catalog's conventions -----------------------------------------------


def test_catalog_usage_file():
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert {"mandatory-flags", "software-stack-deployment", "report"} <= set(usage)
    assert {"desc", "flags"} <= set(usage["mandatory-flags"])
    assert any(usage["software-stack-deployment"].values())
    assert usage["report"] is True


def test_config_readme_names_every_config_file_and_its_example_validates():
    text = (REPO / "config" / "README.md").read_text()
    for path in (REPO / "config").rglob("*.yaml"):
        assert f"`{path.relative_to(REPO / 'config').as_posix()}`" in text, path
    example = next(block for block in re.findall(r"```yaml\n(.*?)```", text, re.S) if "studies:" in block)
    config = plan.validate(yaml.safe_load(example))
    assert config["datasets"]["mine"]["source"] == "image_folder"


def test_snakefile_and_rules_are_snakefmt_formatted():
    result = _run(BIN / "snakefmt", "--check", "Snakefile", "workflow/rules")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("config", [None, "config/paper/all.yaml"], ids=["default", "paper-all"])
def test_snakemake_lint_is_clean(config, tmp_path):
    cmd = [BIN / "snakemake", "-s", REPO / "Snakefile", "--directory", tmp_path, "--lint"]
    if config:
        cmd += ["--configfile", REPO / config]
    result = _run(*cmd)
    assert result.returncode == 0 and "Lints for" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
