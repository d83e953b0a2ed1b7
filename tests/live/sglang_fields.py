"""Read SGLang's CLI flags (and their choices) from its source, without importing SGLang.

SGLang >= 0.5.2x derives ``launch_server``'s argparse flags from annotated dataclass fields in
``sglang/srt/arg_groups/fields/*.py`` (flag = ``--`` + field name with ``-``, plus
``Arg(cli_name=..., aliases=[...])``, skipped when ``Arg(no_cli=True)``); older versions call
``parser.add_argument("--flag", ...)`` in ``sglang/srt/server_args.py``. Both are read here.

``python tests/live/sglang_fields.py sglang-X.whl > tests/live/data/sglang_flags.json``
regenerates the committed fixture from a wheel (``pip download sglang --no-deps``).
"""

from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path


def _const_list(node: ast.AST) -> list | None:
    try:
        v = ast.literal_eval(node)
    except ValueError:
        return None
    return list(v) if isinstance(v, list | tuple) else None


def _from_fields(src: str) -> dict[str, list | None]:
    out: dict[str, list | None] = {}
    for node in ast.walk(ast.parse(src)):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        ann = node.annotation
        if not (isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id in ("A", "Annotated")):
            continue
        elts = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        names = ["--" + node.target.id.replace("_", "-")]
        choices = None
        typ = elts[0]
        if isinstance(typ, ast.Subscript) and isinstance(typ.value, ast.Name) and typ.value.id == "Literal":
            choices = _const_list(typ.slice) or ([ast.literal_eval(typ.slice)] if isinstance(typ.slice, ast.Constant) else None)
        skip = False
        for meta in elts[1:]:
            if isinstance(meta, ast.Call) and isinstance(meta.func, ast.Name) and meta.func.id == "Arg":
                for kw in meta.keywords:
                    if kw.arg == "no_cli" and isinstance(kw.value, ast.Constant) and kw.value.value:
                        skip = True
                    elif kw.arg == "cli_name" and isinstance(kw.value, ast.Constant):
                        names[0] = kw.value.value
                    elif kw.arg == "aliases":
                        names += _const_list(kw.value) or []
                    elif kw.arg == "choices":
                        choices = _const_list(kw.value) or choices
        if not skip:
            for n in names:
                out[n] = choices
    return out


def _from_add_argument(src: str) -> dict[str, list | None]:
    out: dict[str, list | None] = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            choices = next((_const_list(k.value) for k in node.keywords if k.arg == "choices"), None)
            for f in flags:
                out[f] = choices
    return out


def flags_from_sources(files: dict[str, str]) -> dict[str, list | None]:
    """``{flag: choices or None}`` from ``{path: source}`` of an SGLang tree."""
    out: dict[str, list | None] = {}
    for path, src in sorted(files.items()):
        if "/arg_groups/fields/" in path:
            out.update(_from_fields(src))
        elif path.endswith("srt/server_args.py"):
            out.update(_from_add_argument(src))
    return out


def flags_from_wheel(wheel: str | Path) -> tuple[str, dict[str, list | None]]:
    """(version, flags) from an SGLang wheel file."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("sglang/srt/") and n.endswith(".py")
                 and ("/arg_groups/fields/" in n or n.endswith("srt/server_args.py"))]
        files = {n: z.read(n).decode() for n in names}
    version = Path(wheel).name.split("-")[1]
    return version, flags_from_sources(files)


if __name__ == "__main__":
    ver, flags = flags_from_wheel(sys.argv[1])
    json.dump({"source": f"sglang {ver} wheel (pip download sglang --no-deps), "
                         "sglang/srt/arg_groups/fields/*.py + srt/server_args.py",
               "version": ver, "flags": dict(sorted(flags.items()))}, sys.stdout, indent=1)
    print()
