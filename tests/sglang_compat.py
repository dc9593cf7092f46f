#!/usr/bin/env python3
"""What a pinned SGLang release accepts and reports, read from its wheel's source.

    sglang_compat.py WHEEL    # prints one JSON object

No GPU and no torch here, so SGLang itself cannot be imported; its source is read with
`ast` instead:
  flags        every command-line option of `python -m sglang.launch_server`: the
               `ServerArgs` fields declared in sglang/srt/arg_groups/ (`A[T, Arg(...)]`,
               `--field-name` unless `cli_name`, plus `aliases`, minus `no_cli`) and the
               options `server_args.py` registers itself (`--config`, parsers, ...);
  config_suffixes  the file suffixes `--config` accepts;
  load_fields  the fields of `LoadSnapshot`, what `/v1/loads` reports per rank;
  metrics      the Prometheus metric names SGLang registers (`sglang:...`);
  routes       whether `/v1/loads` and `/get_load` are served.
"""
import ast
import json
import re
import sys
import zipfile


def const(node):
    return node.value if isinstance(node, ast.Constant) else None


def main():
    z = zipfile.ZipFile(sys.argv[1])
    names = z.namelist()
    read = lambda n: z.read(n).decode(errors="replace")
    flags = set()
    sources = [n for n in names if n.endswith(".py")
               and (n.startswith("sglang/srt/arg_groups/") or n == "sglang/srt/server_args.py")]
    for n in sources:
        tree = ast.parse(read(n))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                flags.update(v for v in map(const, node.args) if isinstance(v, str) and v.startswith("--"))
            if not isinstance(node, ast.ClassDef):
                continue
            for st in node.body:
                if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)
                        and isinstance(st.annotation, ast.Subscript)):
                    continue
                base = st.annotation.value
                if (getattr(base, "id", None) or getattr(base, "attr", None)) not in ("A", "Annotated"):
                    continue
                sl = st.annotation.slice
                parts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
                if len(parts) < 2:
                    continue
                meta = parts[1]
                cli, aliases = "--" + st.target.id.replace("_", "-"), []
                if isinstance(meta, ast.Call):
                    kw = {k.arg: k.value for k in meta.keywords}
                    if const(kw.get("no_cli")) is True:
                        continue
                    if isinstance(const(kw.get("cli_name")), str):
                        cli = const(kw["cli_name"])
                    if isinstance(kw.get("aliases"), (ast.List, ast.Tuple)):
                        aliases = [const(e) for e in kw["aliases"].elts if isinstance(const(e), str)]
                elif not isinstance(const(meta), str):
                    continue
                flags.update([cli] + aliases)

    parser = read("sglang/srt/utils/server_args_config_parser.py")
    suffixes = re.findall(r'"(\.ya?ml)"', parser)

    load_fields = []
    tree = ast.parse(read("sglang/srt/managers/load_snapshot.py"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "LoadSnapshot":
            load_fields = [st.target.id for st in node.body
                           if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)]

    metrics, routes = set(), {"/v1/loads": False, "/get_load": False}
    for n in names:
        if not (n.endswith(".py") and n.startswith("sglang/srt/")):
            continue
        text = read(n)
        metrics.update(re.findall(r'name="(sglang:[a-z_]+)"', text))
        for r in routes:
            if re.search(r'\.(get|api_route)\(\s*"' + re.escape(r) + '"', text):
                routes[r] = True

    version = next((re.sub(r"\.dist-info$", "", n.split("/")[0]).split("-")[1]
                    for n in names if n.endswith(".dist-info/METADATA")), "?")
    print(json.dumps({
        "version": version,
        "flags": sorted(flags),
        "config_suffixes": sorted(set(suffixes)),
        "load_fields": load_fields,
        "metrics": sorted(metrics),
        "routes": routes,
    }))


main()
