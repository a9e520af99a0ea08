"""Source rewriter: turns a Metal Shading Language file into C++ the emulator compiles with clang.

Only three things differ from C++ once the metal_stdlib shim is on the include path, and each is
rewritten in place so that every line keeps its number (a ``#line`` directive names the original
file, so compiler errors, sanitizer reports and the emulator's own checks point at the .metal line):

* ``threadgroup T name[N];`` in a kernel body becomes storage shared by the threadgroup
  (``static thread_local``: one threadgroup runs per OS thread at a time) that the runtime poisons
  when a threadgroup first reaches it;
* half literals ``0.5h`` become ``((half)0.5)``;
* each kernel (``[[kernel]]`` / ``kernel void``) loses its attributes, and a launcher plus a table
  of its parameters (which ``[[buffer(i)]]``, ``[[threadgroup(i)]]`` or built-in id feeds each one)
  is appended to the file. Template kernels are registered by ``METALLIC_KERNEL`` (shaders/defines.h)
  at their instantiation; plain kernels register themselves under their function name.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

BUILTINS = {
    "thread_position_in_grid": "kThreadPositionInGrid",
    "thread_position_in_threadgroup": "kThreadPositionInThreadgroup",
    "threadgroup_position_in_grid": "kThreadgroupPositionInGrid",
    "threads_per_threadgroup": "kThreadsPerThreadgroup",
    "threadgroups_per_grid": "kThreadgroupsPerGrid",
    "threads_per_grid": "kThreadsPerGrid",
    "thread_index_in_threadgroup": "kThreadIndexInThreadgroup",
    "thread_index_in_simdgroup": "kThreadIndexInSimdgroup",
    "simdgroup_index_in_threadgroup": "kSimdgroupIndexInThreadgroup",
    "threads_per_simdgroup": "kThreadsPerSimdgroup",
    "simdgroups_per_threadgroup": "kSimdgroupsPerThreadgroup",
}

_HALF_LIT = re.compile(r"(?<![\w.])((?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)[hH]\b")
_TG_ARRAY = re.compile(
    r"\bthreadgroup\s+([A-Za-z_][\w:<>, ]*?)\s+([A-Za-z_]\w*)\s*((?:\[[^\]]+\]\s*)+);"
)
_KERNEL = re.compile(r"(\[\[\s*kernel\s*\]\]|\bkernel\b)(\s+void\s+)([A-Za-z_]\w*)\s*\(")
_TEMPLATE = re.compile(r"template\s*<([^<>]*)>\s*(?://[^\n]*\s*)*$")
_ATTR = re.compile(r"\[\[\s*([A-Za-z_]\w*)\s*(?:\(\s*(\d+)\s*\))?\s*\]\]")


class RewriteError(ValueError):
    """A construct the rewriter cannot map; the message names file and line."""


@dataclass
class Param:
    kind: str  # "kBuffer" | "kThreadgroup" | "kBuiltin"
    index: str  # buffer index or ::emu::Builtin::k...
    ctype: str  # the parameter's declared type, attributes removed
    name: str


@dataclass
class Kernel:
    name: str
    template: str | None  # "typename T, int N" or None
    params: list[Param]
    end: int  # offset just past the kernel body's closing brace


def _blank(s: str) -> str:
    """Same length, newlines kept: removes text without moving later lines or columns."""
    return "".join(c if c == "\n" else " " for c in s)


def _split_params(text: str) -> list[tuple[int, str]]:
    """Top-level comma split of a parameter list: (offset, text) pairs."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "(<[":
            depth += 1
        elif c in ")>]":
            depth -= 1
        elif c == "," and depth == 0:
            out.append((start, text[start:i]))
            start = i + 1
    if text[start:].strip():
        out.append((start, text[start:]))
    return out


def _template_names(header: str) -> str:
    names = []
    for part in _split_params(header):
        m = re.search(r"([A-Za-z_]\w*)\s*(?:=.*)?$", part[1].strip())
        if not m:
            raise RewriteError(f"cannot read template parameter {part[1]!r}")
        names.append(m.group(1))
    return ", ".join(names)


def _parse_param(text: str, where: str) -> Param:
    attrs = _ATTR.findall(text)
    decl = _ATTR.sub("", text).strip()
    m = re.match(r"^(.*?)([A-Za-z_]\w*)$", decl, re.S)
    if not attrs or not m:
        raise RewriteError(f"{where}: kernel parameter {decl!r} needs one [[attribute]]")
    ctype, name = m.group(1).strip(), m.group(2)
    attr, idx = attrs[0]
    if attr == "buffer":
        return Param("kBuffer", idx, ctype, name)
    if attr == "threadgroup":
        return Param("kThreadgroup", idx, ctype, name)
    if attr in BUILTINS:
        return Param("kBuiltin", f"::emu::Builtin::{BUILTINS[attr]}", ctype, name)
    raise RewriteError(f"{where}: unsupported attribute [[{attr}]] on parameter {name}")


def _match(src: str, open_at: int, pair: str, where: str) -> int:
    """Index of the bracket closing src[open_at], skipping comments and literals."""
    depth, i = 0, open_at
    while i < len(src):
        c = src[i]
        if src.startswith("//", i):
            i = src.find("\n", i)
            if i < 0:
                break
            continue
        if src.startswith("/*", i):
            i = src.find("*/", i) + 2
            if i < 2:
                break
            continue
        if c in "\"'":
            j = i + 1
            while j < len(src) and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            i = j + 1
            continue
        if c == pair[0]:
            depth += 1
        elif c == pair[1]:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise RewriteError(f"{where}: unbalanced {pair} in a kernel")


def _launcher(k: Kernel, display: str) -> str:
    tmpl = f"template <{k.template}> " if k.template else ""
    targs = f"<{_template_names(k.template)}>" if k.template else ""
    args = []
    infos = []
    for p in k.params:
        if p.kind == "kBuffer":
            args.append(f"::emu::buffer_arg<{p.ctype}>(c, {p.index})")
            infos.append(
                f'{{::emu::ParamKind::kBuffer, {p.index}, "{p.name}", ::emu::ref_size<{p.ctype}>()}}'
            )
        elif p.kind == "kThreadgroup":
            args.append(f"::emu::tg_arg<{p.ctype}>(c, {p.index})")
            infos.append(f'{{::emu::ParamKind::kThreadgroup, {p.index}, "{p.name}", 0}}')
        else:
            args.append(f"::emu::builtin_arg<{p.ctype}>(c, {p.index})")
            infos.append(
                f'{{::emu::ParamKind::kBuiltin, static_cast<int32_t>({p.index}), "{p.name}", 0}}'
            )
    n = len(k.params)
    infos_txt = ", ".join(infos) if infos else '{::emu::ParamKind::kBuiltin, 0, "", 0}'
    out = (
        f"{tmpl}[[maybe_unused]] static void __emu_launch_{k.name}(const ::emu::LaneCtx& c) {{ "
        f"{k.name}{targs}({', '.join(args)}); }} "
        f"{tmpl}[[maybe_unused]] static const ::emu::KernelInfo& __emu_info_{k.name}() {{ "
        f"static const ::emu::ParamInfo p[] = {{{infos_txt}}}; "
        f'static const ::emu::KernelInfo i{{p, {n}, &__emu_launch_{k.name}{targs}, "{display}"}}; '
        f"return i; }}"
    )
    if not k.template:
        out += f' static ::emu::Registrar __emu_reg_{k.name}("{k.name}", __emu_info_{k.name}());'
    return out


def rewrite(src: str, display: str) -> str:
    """Returns the C++ text for one .metal / .h file; `display` is the path shown in messages."""
    kernels: list[Kernel] = []
    out = src
    for m in list(_KERNEL.finditer(out)):
        line = out.count("\n", 0, m.start()) + 1
        where = f"{display}:{line}"
        before = out[: m.start()]
        tm = _TEMPLATE.search(before)
        template = tm.group(1).strip() if tm else None
        close = _match(out, m.end() - 1, "()", where)
        body_open = out.index("{", close)
        body_close = _match(out, body_open, "{}", where)
        plist = out[m.end() : close]
        params = [_parse_param(t, where) for _, t in _split_params(plist)]
        kernels.append(Kernel(m.group(3), template, params, body_close + 1))
        new_plist = _ATTR.sub(lambda a: _blank(a.group(0)), plist)
        out = (
            out[: m.start()]
            + _blank(m.group(1))
            + out[m.end(1) : m.end()]
            + new_plist
            + out[close:]
        )
    # Launchers go right after each kernel (same namespace), on the kernel's last line so that
    # no line number moves; insert from the back so earlier offsets stay valid.
    for k in reversed(kernels):
        out = out[: k.end] + " " + _launcher(k, display) + out[k.end :]
    out = _TG_ARRAY.sub(
        lambda a: (
            f"static thread_local {a.group(1)} {a.group(2)}{a.group(3).strip()}; "
            f"::emu::tg_declare({a.group(2)}, sizeof({a.group(2)}));"
        ),
        out,
    )
    out = _HALF_LIT.sub(lambda a: f"((half){a.group(1)})", out)
    return f'#include "runtime.h"\n#line 1 "{display}"\n' + out


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: rewrite.py INPUT OUTPUT DISPLAY_PATH", file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        text = f.read()
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(rewrite(text, argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
