"""The documentation's generated parts, made from the declarations the workflow itself reads.

* ``docs/configuration.md``: every config key, its type, default and description, from
  ``config/schema/config.schema.yaml`` as :func:`medtune.plan.completed_schema` completes it
  (each registered method's declared parameters, each registered study).
* Regions of hand-written pages between ``<!-- generated: WHAT [ARG] -->`` and
  ``<!-- end generated -->``: ``defaults <method>`` (a method's parameters and defaults, from its
  ``SPEC``), ``method-list`` (every method, its kind and its page) and ``study-outputs`` (every
  study's tables and figures). The page holding a method's ``defaults`` region is that method's
  page; every registered method must have one.

``python -m medtune.docs`` writes them; ``--check`` writes nothing and fails, naming the files,
when one is stale (``make test`` runs the same check in ``tests/test_docs.py``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

from medtune import methods as method_registry
from medtune import plan
from medtune import studies as study_registry

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
CONFIG_PAGE = "configuration.md"
METHOD_PAGES = "methods"
REGION = re.compile(r"(<!-- generated: (?P<what>[\w-]+)(?: (?P<arg>[\w-]+))? -->\n).*?(<!-- end generated -->)", re.S)
KIND = {
    "none": "no training (the pretrained model)",
    "frozen": "fitted on cached features of the frozen backbone",
    "backbone": "trained inside the backbone",
    "transductive": "a stage refining the test predictions of other methods' runs",
    "soup": "a weight average of other methods' backbone-trained runs",
}
# the key column's placeholder for a free-form name under a mapping key
NAME_OF = {"datasets": "<dataset>", "backbones": "<backbone>", "methods": "<method>", "label_map": "<label>",
           "md5": "<file>", "classnames": "<class>"}


class DocsError(ValueError):
    """The docs cannot be generated (a method without a page, an unknown region); one line."""


# -- cells ------------------------------------------------------------------------------------


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(text: str) -> str:
    """A description as one table cell: whitespace folded, and outside `code` spans the
    characters Markdown would take for a cell border or an HTML tag escaped."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|").replace("<", "&lt;") for p in parts)


def _code(text: str) -> str:
    # Python-Markdown's tables keep a pipe inside a code span in its cell (GitHub's would not)
    return f"`{text}`"


def _bounds(node: dict[str, Any]) -> list[str]:
    """``in [0, 1]``, ``in (0, 10]``, ``≥ 1``, ``> 0``: the node's numeric bounds."""
    low = next(((k, node[k]) for k in ("minimum", "exclusiveMinimum") if k in node), None)
    high = next(((k, node[k]) for k in ("maximum", "exclusiveMaximum") if k in node), None)
    if low and high:
        left, right = "[" if low[0] == "minimum" else "(", "]" if high[0] == "maximum" else ")"
        return [f"in {left}{_value(low[1])}, {_value(high[1])}{right}"]
    if low:
        return [f"{'≥' if low[0] == 'minimum' else '>'} {_value(low[1])}"]
    if high:
        return [f"{'≤' if high[0] == 'maximum' else '<'} {_value(high[1])}"]
    return []


def type_of(node: dict[str, Any], schema: dict[str, Any]) -> str:
    """A schema node's type in words: ``integer ≥ 1``, ``list of number > 0, 2 items``, ``one of a, b``."""
    node = _resolve(node, schema)
    for either in ("oneOf", "anyOf"):
        if either in node:
            return " or ".join(type_of(option, schema) for option in node[either])
    if "enum" in node:
        return "one of " + ", ".join(_code(v if isinstance(v, str) else _value(v)) for v in node["enum"])
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array":
        words = [f"list of {type_of(node.get('items', {}), schema)}"]
        least, most = node.get("minItems", 0), node.get("maxItems")
        if least and least == most:
            words.append(f"{least} items")
        else:
            if least:
                words.append(f"at least {least}")
            if most is not None:
                words.append(f"at most {most}")
        if node.get("uniqueItems"):
            words.append("distinct")
        return ", ".join(words)
    if kind == "object" and isinstance(node.get("additionalProperties"), dict) and not node.get("properties"):
        return f"mapping to {type_of(node['additionalProperties'], schema)}"
    words = [kind, *_bounds(node)]
    if "pattern" in node:
        words.append(f"matching {_code(node['pattern'])}")
    return " ".join(words)


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


# -- the configuration reference ---------------------------------------------------------------


def _rows(node: dict[str, Any], key: str, schema: dict[str, Any], defaults: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """One row per key below ``node``: key path, type, default, description; a mapping of named
    entries (``datasets``) goes on under a placeholder (``datasets.<dataset>``)."""
    node = _resolve(node, schema)
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        path = f"{key}.{name}" if key else name
        resolved = _resolve(child, schema)
        default = (defaults or {}).get(name, resolved.get("default"))
        kind = type_of(resolved, schema) + (" (required)" if name in required else "")
        shown = "" if default is None and name not in (defaults or {}) else _code(_value(default))
        yield [_code(path), kind, shown, _text(resolved.get("description", ""))]
        entry = resolved.get("additionalProperties")
        if isinstance(entry, dict) and entry.get("properties"):
            yield from _rows(entry, f"{path}.{NAME_OF.get(name, '<name>')}", schema)
        elif resolved.get("properties"):
            yield from _rows(resolved, path, schema)


def _sources_of(key_cell: str) -> str:
    """The sources that read a dataset key (``sizes.train``: those that read ``sizes``)."""
    from medtune.data.sources import COMMON_KEYS, SOURCES

    key = key_cell.strip("`").split(".")[0]
    if key in COMMON_KEYS:
        return "all"
    using = [s for s in SOURCES.values() if key in s.keys]
    if all(key in s.required for s in using):
        return ", ".join(s.name for s in using) + " (required)"
    return ", ".join(f"{s.name}{' (required)' if key in s.required else ''}" for s in using)


def _table(rows: list[list[str]], header: tuple[str, ...] = ("key", "type", "default", "description")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def method_pages(docs_dir: Path = DOCS_DIR) -> dict[str, str]:
    """Each method's page (relative to ``docs/``): the page under ``docs/methods/`` that holds its
    ``defaults`` region."""
    found: dict[str, str] = {}
    for page in sorted((docs_dir / METHOD_PAGES).glob("*.md")):
        for match in REGION.finditer(page.read_text()):
            if match["what"] == "defaults":
                found[match["arg"]] = f"{METHOD_PAGES}/{page.name}"
    return found


def _methods() -> list[method_registry.Method]:
    return sorted(method_registry.registered().values(), key=lambda m: (m.order, m.name))


def _header(prefix: str) -> tuple[str, ...]:
    """A table's header whose key column holds the keys below ``prefix``."""
    return (f"`{prefix}`", "type", "default", "description")


def method_defaults(method: method_registry.Method) -> str:
    """A method's parameters: type, default (its SPEC's) and description, under ``methods.<name>.``."""
    if not method.params:
        return f"`{method.name}` has no settings.\n"
    node = {"type": "object", "properties": method.params}
    return _table(list(_rows(node, "", {}, method.defaults)), _header(f"methods.{method.name}."))


def configuration_page(docs_dir: Path = DOCS_DIR) -> str:
    schema = plan.completed_schema()
    pages = method_pages(docs_dir)
    top = {k: v for k, v in schema["properties"].items() if k not in ("datasets", "backbones", "methods", "studies")}
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `make docs` (python -m medtune.docs) from config/schema/config.schema.yaml and the",
        "     method and study SPECs; edit those, not this page. -->",
        "",
        "Every key a config may hold, generated from `config/schema/config.schema.yaml` as the workflow",
        "completes it (`medtune.plan.completed_schema`: each method's declared parameters, each study).",
        "The workflow checks a config against it before it builds a job, and stops on an unknown key or",
        "a bad value with one line naming it ([Troubleshooting](troubleshooting.md#config-errors)).",
        "`config/README.md` explains the config files and how to write one for your own data.",
        "A table's keys lie under the prefix in its header; `<dataset>`, `<backbone>` and `<method>` stand for",
        "a name of your choice.",
        "",
        "## Top level {#top-level}",
        "",
        _table([*_rows({"properties": top}, "", schema),
                *([_code(k), "mapping", "", f"[below](#{k})"] for k in ("datasets", "backbones", "methods", "studies"))]),
    ]
    datasets = list(_rows(schema["properties"]["datasets"]["additionalProperties"], "", schema))
    out += [
        "## datasets {#datasets}",
        "",
        "One entry per dataset, by a name of your choice. Each `source` reads only the keys listed for it",
        "(`medtune.data.sources`); any other key stops the run naming it.",
        "",
        _table([[*row, _sources_of(row[0])] for row in datasets], ("`datasets.<dataset>.`", "type", "default", "description", "sources")),
        "## backbones {#backbones}",
        "",
        "One entry per backbone, by a name of your choice: an open_clip model with pretrained weights, a",
        "local checkpoint, or one the workflow pretrains itself (`pretrain`).",
        "",
        _table(list(_rows(schema["properties"]["backbones"]["additionalProperties"], "", schema)), _header("backbones.<backbone>.")),
    ]
    methods = schema["properties"]["methods"]
    out += [
        "## methods {#methods}",
        "",
        "A `methods.<method>` entry sets a registered method's parameters, or declares a variant: an entry",
        "with `base` takes that method's defaults, then the base's own entry, then its own keys",
        "([Methods](methods/index.md#settings-and-variants)). Keys every entry may hold:",
        "",
        _table([[_code(k), type_of(v, schema), "", _text(v.get("description", ""))] for k, v in plan.ENTRY_KEYS.items()],
               _header("methods.<method>.")),
    ]
    for method in _methods():
        if method.name not in methods["properties"]:
            continue
        link = f" ([{method.label}]({pages[method.name]}))" if method.name in pages else ""
        out += [f"### methods.{method.name} {{#methods-{method.name.replace('_', '-')}}}", "",
                f"{KIND[method.training].capitalize()}{link}.", "", method_defaults(method)]
    study = schema["$defs"]["study"]
    registered = study_registry.registered()
    out += [
        "## studies {#studies}",
        "",
        "One entry per study to run, among the registered studies ([Studies](studies.md)): "
        + ", ".join(f"`{name}`" for name in registered) + ". Each entry holds:",
        "",
        _table(list(_rows(study, "", schema)), _header("studies.<study>.")),
        "A study's `conditions` default to its module's:",
        "",
        _table([[_code(name), s.label, ", ".join(_code(c) for c in s.conditions)] for name, s in registered.items()],
               ("study", "label", "default conditions")),
    ]
    return "\n".join(out).rstrip() + "\n"


# -- regions of hand-written pages -------------------------------------------------------------


def _title(page: Path) -> str:
    return next((line[2:].strip() for line in page.read_text().splitlines() if line.startswith("# ")), page.stem)


def _method_list(docs_dir: Path) -> str:
    pages = method_pages(docs_dir)
    rows = []
    for m in _methods():
        page = pages.get(m.name)
        # links are relative to docs/methods/index.md, the page that holds this region
        where = f"[{_title(docs_dir / page)}]({Path(page).name})" if page else "—"
        kind = KIND[m.training] + (", runs the text encoder" if m.needs_text_encoder else "")
        rows.append([_code(m.name), _text(m.label), kind, where])
    return _table(rows, ("method", "label in tables", "kind", "page"))


def _study_outputs() -> str:
    rows = []
    for name, study in study_registry.registered().items():
        for kind, outputs, folder in (("table", study.tables, "tables"), ("figure", study.figures, "figures")):
            for out in outputs.values():
                files = f"results/{folder}/{out.name}." + ("{csv,md,tex}" if kind == "table" else "png")
                when = f" *When {out.when.replace(':', ': ')}.*" if out.when else ""
                rows.append([_code(name), kind, _code(files), _text(out.title or out.caption) + when])
    return _table(rows, ("study", "kind", "file", "what it shows"))


def _region(what: str, arg: str | None, docs_dir: Path, page: Path) -> str:
    if what == "defaults":
        registered = method_registry.registered()
        if arg not in registered:
            raise DocsError(f"{page}: region 'defaults {arg}' names no registered method ({', '.join(registered)})")
        return method_defaults(registered[arg])
    if what == "method-list":
        return _method_list(docs_dir)
    if what == "study-outputs":
        return _study_outputs()
    raise DocsError(f"{page}: unknown generated region {what!r} (defaults <method>, method-list, study-outputs)")


def fill_regions(text: str, docs_dir: Path, page: Path) -> str:
    return REGION.sub(lambda m: m[1] + "\n" + _region(m["what"], m["arg"], docs_dir, page) + "\n" + m[4], text)


def generate(docs_dir: Path = DOCS_DIR) -> dict[Path, str]:
    """Every generated file's up-to-date text, by path."""
    missing = sorted(set(method_registry.registered()) - set(method_pages(docs_dir)))
    if missing:
        raise DocsError(
            f"method {missing[0]!r} has no page: add '<!-- generated: defaults {missing[0]} -->' and "
            f"'<!-- end generated -->' to its family's page under {docs_dir / METHOD_PAGES}/"
        )
    out = {docs_dir / CONFIG_PAGE: configuration_page(docs_dir)}
    for page in sorted(docs_dir.rglob("*.md")):
        if page.name != CONFIG_PAGE or page.parent != docs_dir:
            text = page.read_text()
            if REGION.search(text):
                out[page] = fill_regions(text, docs_dir, page)
    return out


def stale(docs_dir: Path = DOCS_DIR) -> list[Path]:
    """The generated files whose committed text differs from a fresh generation."""
    return [p for p, text in generate(docs_dir).items() if not p.is_file() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medtune.docs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    parser.add_argument("--docs-dir", type=Path, default=DOCS_DIR)
    args = parser.parse_args(argv)
    try:
        if args.check:
            old = stale(args.docs_dir)
            for path in old:
                print(f"medtune docs: {path} is stale; run make docs", file=sys.stderr)
            return 1 if old else 0
        for path, text in generate(args.docs_dir).items():
            if not path.is_file() or path.read_text() != text:
                path.write_text(text)
                print(f"medtune docs: wrote {path}")
    except DocsError as err:
        print(f"medtune docs: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
