"""Reads Apple's metal-cpp headers into the Objective-C Metal API they wrap (an Api).

metal-cpp (Apple, Apache-2.0; fetched by scripts/fetch_metal_cpp.sh, never committed) wraps every
Metal method in an inline that sends the Objective-C message, e.g.

    _MTL_INLINE MTL::Buffer* MTL::Device::newBuffer(NS::UInteger length, MTL::ResourceOptions
    options) { return Object::sendMessage<MTL::Buffer*>(this, _MTL_PRIVATE_SEL(
    newBufferWithLength_options_), length, options); }

and Metal/MTLHeaderBridge.hpp spells each selector ("newBufferWithLength:options:") and names the
real classes (_MTL_PRIVATE_DEF_CLS; every other Metal type is a protocol). parse() reads exactly
these: the class declarations (and their bases), every message-sending inline (its selector, its
C++ parameter and return types mapped to Objective-C by _Mapper), the enums and options with their
values, the plain structs with the Make functions that follow their constructors, the `using`
typedefs (block types among them), the string constants and the extern "C" functions. Whatever
has no Objective-C spelling here is recorded in Api.skipped, never guessed.
native/metal_linux/metal_api_header.py renders the result as <Metal/Metal.h>.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

W = "[metal_api_header]"  # the tool whose errors these are
_NS_SCALARS = {"NS::UInteger": "NSUInteger", "NS::Integer": "NSInteger", "NS::Range": "NSRange",
               "NS::TimeInterval": "NSTimeInterval", "bool": "BOOL", "std::uint64_t": "uint64_t",
               "std::uint32_t": "uint32_t", "std::int64_t": "int64_t"}  # fmt: skip
_C_SCALARS = {"void", "float", "double", "char", "int", "short", "long", "unsigned", "size_t",
              *(f"{u}int{n}_t" for u in ("", "u") for n in (8, 16, 32, 64))}  # fmt: skip
_NS_OBJECTS = {"NS::String": "NSString*", "NS::Error": "NSError*", "NS::URL": "NSURL*",
               "NS::Array": "NSArray*", "NS::Dictionary": "NSDictionary*", "NS::Bundle": "NSBundle*",
               "NS::Data": "NSData*", "NS::Number": "NSNumber*", "NS::Set": "NSSet*",
               "NS::Date": "NSDate*", "NS::Object": "id",
               # pointer-valued Foundation typedefs (GNUstep has no NSErrorUserInfoKey)
               "NS::ErrorDomain": "NSErrorDomain", "NS::ErrorUserInfoKey": "NSString*",
               "NS::NotificationName": "NSNotificationName"}  # fmt: skip
_NS_ALIAS_OBJECTS = {"NS::ErrorDomain", "NS::ErrorUserInfoKey", "NS::NotificationName"}
_RESERVED = {"id", "self", "super", "in", "out", "inout", "bycopy", "byref", "oneway", "SEL",
             "BOOL", "Class", "IMP", "nil", "Nil", "YES", "NO", "_cmd"}  # fmt: skip
# Where metal-cpp's C++ parameter type is not Apple's Objective-C one (Apple's MTLDevice.h, as
# documented): (type, selector, parameter index) → (metal-cpp's type mapped, Apple's type).
_APPLE_PARAMS = {("Device", "newBufferWithBytesNoCopy:length:options:deallocator:", 0):
                 ("const void*", "void*")}  # fmt: skip


@dataclass
class Method:
    selector: str
    is_class: bool
    ret: str
    params: list[tuple[str, str]]  # (Objective-C type, name)

    def decl(self) -> str:
        head = f"{'+' if self.is_class else '-'} ({self.ret})"
        if not self.params:
            return f"{head}{self.selector};"
        parts = self.selector.split(":")[:-1]
        return (
            head
            + " ".join(f"{k}:({t}){n}" for k, (t, n) in zip(parts, self.params, strict=True))
            + ";"
        )


@dataclass
class Type:
    name: str  # Objective-C name, MTL-prefixed
    is_class: bool  # a real class (_MTL_PRIVATE_DEF_CLS), else a protocol
    base: str | None  # the Metal base type: its key in Api.types (None: NSObject)
    extra: list[str]  # Foundation protocols adopted (NSCopying...)
    methods: dict[tuple[bool, str], Method] = field(default_factory=dict)


@dataclass
class Api:
    types: dict[str, Type] = field(default_factory=dict)
    enums: list[str] = field(default_factory=list)  # emitted text, one per enum
    n_values: int = 0
    decls: list[str] = field(default_factory=list)  # structs, typedefs, Make functions, in order
    n_structs: int = 0
    n_makes: int = 0
    n_typedefs: int = 0
    constants: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "owner: C++ signature: why"
    n_cpp_only: int = 0  # inlines that send no message (std::function conveniences, alloc/init)

    @property
    def n_methods(self) -> int:
        return sum(len(t.methods) for t in self.types.values())


def fail(what: str) -> SystemExit:
    return SystemExit(f"{W} {what}")


def _close(text: str, i: int) -> int:
    """Index just past the bracket matching the one at text[i]."""
    pairs = {"(": ")", "{": "}", "[": "]", "<": ">"}
    opener, depth = text[i], 0
    for j in range(i, len(text)):
        if text[j] == opener:
            depth += 1
        elif text[j] == pairs[opener]:
            depth -= 1
            if depth == 0:
                return j + 1
    raise fail(f"unbalanced {opener!r} in {text[i : i + 80]!r}")


def _split(s: str) -> list[str]:
    """Splits at commas outside brackets (a trailing comma ends the list; blank: [])."""
    out, depth, cur = [], 0, []
    for ch in s:
        depth += ch in "(<[{"
        depth -= ch in ")>]}"
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    last = "".join(cur).strip()
    return [*out, last] if last else out


def _param(p: str, named: bool = True) -> tuple[str, str, str]:
    """(type, name, array suffix) of one C++ parameter; name "" when unnamed."""
    p = " ".join(p.split())
    m = re.fullmatch(r"(.*?)\(\s*\^\s*(\w*)\s*\)\s*(\(.*\))", p)
    if m:  # a block: R (^name)(args)
        return f"{m[1].strip()} (^){m[3]}", m[2], ""
    m = re.fullmatch(r"(.*[\s*&])(\w+)\s*(\[\w*\])?", p)
    if named and m and m[1].strip() not in ("", "const", "unsigned", "struct", "class"):
        return m[1].strip(), m[2], m[3] or ""
    return p, "", ""


class _Mapper:
    """C++ types of metal-cpp → Objective-C types of <Metal/Metal.h> (None: no spelling)."""

    def __init__(self, api: Api, enums: set[str]):
        self.api, self.enums = api, enums
        self.values: dict[str, str] = {}  # structs and typedefs declared so far: C++ → ObjC
        self.object_aliases: set[str] = set()  # typedefs of object pointers

    def _base(self, base: str, stars: int) -> tuple[str, int] | None:
        """(Objective-C spelling, stars it consumed) of a base type name."""
        short = base.removeprefix("MTL::")
        if short in self.api.types and stars >= 1:
            t = self.api.types[short]
            return (f"{t.name}*" if t.is_class else f"id<{t.name}>"), 1
        if base in _NS_OBJECTS and (stars >= 1 or base in _NS_ALIAS_OBJECTS):
            return _NS_OBJECTS[base], 0 if base in _NS_ALIAS_OBJECTS else 1
        if short in self.object_aliases:
            return f"MTL{short}", 0
        for table in (_NS_SCALARS, self.values):
            if (short if table is self.values else base) in table:
                return table[short if table is self.values else base], 0
        if short in self.enums:
            return f"MTL{short}", 0
        if base == "id":
            return "id", 0
        if base in _C_SCALARS or base in ("unsigned int", "unsigned long", "unsigned char"):
            return base, 0
        return None

    def is_object(self, t: str) -> bool:
        """Whether `t` is an Objective-C object pointer (NSString*, id<MTLBuffer>, a typedef of
        one), whose `const` the Objective-C declaration does not carry."""
        got = self._map(t)
        return got is not None and got[1]

    def objc(self, t: str, array: bool = False) -> str | None:
        """The Objective-C spelling of C++ type `t` (`array`: of a `T name[]` parameter)."""
        got = self._map(t, array)
        return None if got is None else got[0]

    def _map(self, t: str, array: bool = False) -> tuple[str, bool] | None:
        t = " ".join(re.sub(r"\b(?:class|struct)\s+", "", t).split())
        m = re.fullmatch(r"(?:const\s+)?(.*?)\(\s*\^\s*\)\s*\((.*)\)", t)
        if m:  # block type
            ret = self.objc(m[1])
            mapped = [self.objc(_param(a)[0]) for a in _split(m[2]) if a != "void"]
            if ret is None or None in mapped:
                return None
            return f"{ret} (^)({', '.join(mapped) or 'void'})", False  # type: ignore[arg-type]
        if re.search(r"[<>&()\[\]]", t):
            return None  # templates (std::function), references, function pointers
        toks = t.replace("*", " * ").split()
        stars = toks.count("*")
        first = toks.index("*") if stars else len(toks)
        pointee_const = "const" in toks[:first]
        top_const = bool(toks) and toks[-1] == "const"
        base = " ".join(x for x in toks[:first] if x != "const")
        got = self._base(base, stars)
        if got is None:
            return None
        text, used = got
        rest = "*" * (stars - used)
        is_obj = (used == 1 or base in _NS_ALIAS_OBJECTS
                  or base.removeprefix("MTL::") in self.object_aliases)  # fmt: skip
        if array:  # T name[]: a pointer to T, const as declared
            const = top_const if is_obj else pointee_const
            return f"{'const ' if const else ''}{text}{rest}*", False
        const = pointee_const and not is_obj and stars > 0  # by-value const means nothing here
        return f"{'const ' if const else ''}{text}{rest}", is_obj and not rest


_CLASS = re.compile(
    r"\bclass\s+(\w+)\s*:\s*public\s+NS::(Referencing|Copying|SecureCoding)\s*<\s*\w+\s*"
    r"(?:,\s*([\w:]+)\s*)?>"
)
_ENUM = re.compile(r"_MTL_(ENUM|OPTIONS)\(\s*([\w:]+)\s*,\s*(\w+)\s*\)\s*\{(.*?)\};", re.S)
_USING = re.compile(r"^using\s+(\w+)\s*=\s*(.+?);", re.M)
_CONST = re.compile(r"_MTL_CONST\(\s*([\w:]+)\s*,\s*(\w+)\s*\)\s*;")
_EXTERN_C = re.compile(r'extern\s+"C"\s+(.+?)\s*\b(MTL\w+)\s*\(([^)]*)\)\s*;')
_STRUCT = re.compile(r"^struct\s+(\w+)\s*\{", re.M)
_SEND = re.compile(r"\bsendMessage(?:Safe)?\s*<")


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _headers(metal_cpp: Path) -> list[tuple[str, str]]:
    metal = metal_cpp / "Metal"
    if not (metal / "MTLHeaderBridge.hpp").is_file():
        raise fail(
            f"--metal-cpp {metal_cpp}: expected metal-cpp (Metal/MTLHeaderBridge.hpp), got none"
        )
    skip = {"MTLHeaderBridge.hpp", "MTLPrivate.hpp", "MTLDefines.hpp", "Metal.hpp"}
    return [(p.name, _strip_comments(p.read_text(encoding="utf-8")))
            for p in sorted(metal.glob("*.hpp")) if p.name not in skip]  # fmt: skip


def _enum(kind: str, underlying: str, name: str, body: str, mapper: _Mapper, names: set) -> str:
    under = _NS_SCALARS.get(underlying, underlying)
    lines = []
    for item in _split(body.replace("\n", " ")):
        m = re.fullmatch(r"(\w+)\s*=\s*(.+)", item)
        if not m:
            raise fail(f"enum {name}: expected `Name = value`, got {item!r}")
        value = re.sub(r"\bNS::(\w+)", r"NS\1", m[2].strip())
        value = re.sub(
            r"\b(?:MTL::)?([A-Z]\w*)\b", lambda v: f"MTL{v[1]}" if v[1] in names else v[0], value
        )
        lines.append(f"  MTL{m[1]} = {value},")
    mapper.api.n_values += len(lines)
    body_text = "\n".join(lines)
    if kind == "OPTIONS":  # as Apple's NS_OPTIONS in C++: an integer type, so `a | b` is one
        return f"typedef {under} MTL{name};\nenum : {under} {{\n{body_text}\n}};"
    return f"typedef enum MTL{name} : {under} {{\n{body_text}\n}} MTL{name};"


def _structs(api: Api, files: list[tuple[str, str]]) -> dict[str, dict]:
    """Plain structs: {name: {"fields": [(type, name, suffix)], "ctors": {arity: (params,
    {field: init args})}, "makes": [(fn, params, ctor args)]}}. A struct with a union or an
    unnamed member is left out."""
    out: dict[str, dict] = {}
    for fname, text in files:
        for m in _STRUCT.finditer(text):
            body = text[m.end() - 1 : _close(text, m.end() - 1)][1:-1]
            fields = [_param(s) for s in body.split(";") if s.strip() and "(" not in s]
            if "union" in body or any(not n for _, n, _s in fields):
                api.skipped.append(f"struct MTL{m[1]} ({fname}): a union or unnamed member")
                continue
            out[m[1]] = {"fields": fields, "ctors": {}, "makes": []}
    for _f, text in files:
        for _ret, cls, fn, params, trailer, body in _inline_defs(text):
            if cls not in out:
                continue
            ps = [_param(p) for p in _split(params)]
            if fn == cls:  # constructor: `: field(args), ...`
                inits = {}
                for item in _split(trailer.lstrip(":")):
                    im = re.fullmatch(r"(\w+)\s*\((.*)\)", item, re.S)
                    if im:
                        inits[im[1]] = _split(im[2])
                out[cls]["ctors"][len(ps)] = ([n for _t, n, _s in ps], inits)
            else:  # static Make...(): `return Struct(args);`
                rm = re.fullmatch(rf"\s*return\s+{cls}\s*\((.*)\)\s*;\s*", body, re.S)
                if rm:
                    out[cls]["makes"].append((fn, ps, _split(rm[1])))
    return out


def _inline_defs(text: str):
    """(return type, class, method, params, trailer, body) of each _MTL_INLINE definition."""
    for m in re.finditer(r"_MTL_INLINE\s+", text):
        brace = text.index("{", m.end())
        head, body = text[m.end() : brace], text[brace + 1 : _close(text, brace) - 1]
        q = re.search(r"\bMTL::(\w+)::(\w+)\s*\(", head)
        if not q:
            continue
        end = _close(head, q.end() - 1)
        params = head[q.end() : end - 1]
        yield " ".join(head[: q.start()].split()), q[1], q[2], params, head[end:].strip(), body


def _message(body: str):
    """(is_class, selector accessor, argument texts) of the one message an inline sends."""
    sends = list(_SEND.finditer(body))
    if len(sends) != 1:
        return None
    lt = sends[0].end() - 1
    paren = _close(body, lt)
    while paren < len(body) and body[paren].isspace():
        paren += 1
    args = _split(body[paren + 1 : _close(body, paren) - 1])
    sel = re.fullmatch(r"_MTL_PRIVATE_SEL\((\w+)\)", args[1]) if len(args) > 1 else None
    if sel is None:
        return None
    cls = re.fullmatch(r"_MTL_PRIVATE_CLS\((\w+)\)", args[0])
    if args[0] != "this" and cls is None:
        return None
    return cls is not None, sel[1], args[2:]


def _c_struct_init(structs: dict, name: str, args: list[str]) -> str | None:
    """C initializer of struct `name` built by its constructor taking `args`."""
    ctor = structs[name]["ctors"].get(len(args))
    if ctor is None:
        return None
    env = dict(zip(ctor[0], args, strict=True))
    items = []
    for ftype, fname, _s in structs[name]["fields"]:
        init = ctor[1].get(fname)
        if init is None:
            return None
        vals = [re.sub(r"\b\w+\b", lambda t: env.get(t[0], t[0]), a) for a in init]
        sub = ftype.removeprefix("MTL::")
        if sub in structs:
            nested = _c_struct_init(structs, sub, vals)
            if nested is None:
                return None
            items.append(nested)
        elif len(vals) == 1:
            items.append(vals[0])
        else:
            return None
    return "{" + ", ".join(items) + "}"


def parse(metal_cpp: Path) -> Api:
    """Everything metal-cpp declares that has an Objective-C spelling (the rest in .skipped)."""
    files = _headers(metal_cpp)
    bridge = "".join(  # MTLPrivate.hpp spells a few selectors too (beginScope, endScope)
        (metal_cpp / "Metal" / n).read_text(encoding="utf-8")
        for n in ("MTLHeaderBridge.hpp", "MTLPrivate.hpp")
    )
    selectors = dict(re.findall(r'_MTL_PRIVATE_DEF_SEL\(\s*(\w+)\s*,\s*"([^"]*)"\s*\)', bridge))
    real_classes = set(re.findall(r"_MTL_PRIVATE_DEF_CLS\(\s*MTL(\w+)\s*\)", bridge))
    if not selectors or not real_classes:
        raise fail(
            f"{metal_cpp}/Metal/MTLHeaderBridge.hpp: expected selectors and classes, got none"
        )
    api = Api()
    for _f, text in files:
        for m in _CLASS.finditer(text):
            base = m[3].removeprefix("MTL::") if m[3] else None
            extra = {"Copying": ["NSCopying"], "SecureCoding": ["NSSecureCoding"]}.get(m[2], [])
            if base == "NS::FastEnumeration":
                base, extra = None, [*extra, "NSFastEnumeration"]
            api.types[m[1]] = Type(f"MTL{m[1]}", m[1] in real_classes, base, extra)
    enum_defs = [m for _f, text in files for m in _ENUM.finditer(text)]
    mapper = _Mapper(api, {m[3] for m in enum_defs})
    names = {re.sub(r"\s*=.*", "", i).strip() for m in enum_defs for i in _split(m[4])}
    api.enums = [_enum(m[1], m[2], m[3], m[4], mapper, names) for m in enum_defs]
    structs = _structs(api, files)
    _declare_values(api, files, structs, mapper)
    _declare_methods(api, files, structs, selectors, mapper)
    for _f, text in files:
        for m in _CONST.finditer(text):
            t = mapper.objc(m[1])
            if t is None:
                api.skipped.append(f"constant MTL{m[2]}: no Objective-C type for {m[1]!r}")
            else:
                api.constants.append(f"extern {t} const MTL{m[2]};")
        for m in _EXTERN_C.finditer(text):
            ret = mapper.objc(m[1])
            ps = [mapper.objc(_param(p, named=False)[0]) for p in _split(m[3])]
            if ret is None or None in ps:
                api.skipped.append(f"function {m[2]}: a type has no Objective-C spelling")
            else:
                api.functions.append(f"{ret} {m[2]}({', '.join(ps) or 'void'});")  # type: ignore
    return api


def _declare_struct(api: Api, structs: dict, name: str, mapper: _Mapper) -> bool:
    """The struct's typedef and Make functions; False while a member type is still unknown."""
    mapped = [(mapper.objc(t, bool(s)), n, s) for t, n, s in structs[name]["fields"]]
    if any(t is None for t, _n, _s in mapped):
        return False
    members = "".join(f"  {t.removesuffix('*') if s else t} {n}{s};\n" for t, n, s in mapped)
    api.decls.append(f"typedef struct {{\n{members}}} MTL{name};")
    mapper.values[name] = f"MTL{name}"
    api.n_structs += 1
    for fn, ps, args in structs[name]["makes"]:
        init = _c_struct_init(structs, name, args)
        sig = [(mapper.objc(t), n) for t, n, _s in ps]
        if init is None or any(t is None for t, _n in sig):
            api.skipped.append(f"MTL{name}::{fn}: no constructor to follow")
            continue
        var = "made"
        while var in (n for _t, n in sig):
            var += "_"
        args_text = ", ".join(f"{t} {n}" for t, n in sig)
        api.decls.append(f"static inline MTL{name} MTL{name}{fn}({args_text}) {{\n"
                         f"  MTL{name} {var} = {init};\n  return {var};\n}}")  # fmt: skip
        api.n_makes += 1
    return True


def _declare_typedef(api: Api, alias: str, target: str, mapper: _Mapper) -> bool:
    mapped = mapper.objc(target)
    if mapped is None:
        return False
    if "(^)" in mapped:  # a block type: the name goes inside
        api.decls.append(f"typedef {mapped.replace('(^)', f'(^MTL{alias})', 1)};")
    else:
        api.decls.append(f"typedef {mapped} MTL{alias};")
    if mapper.is_object(target):
        mapper.object_aliases.add(alias)
    else:
        mapper.values[alias] = f"MTL{alias}"
    api.n_typedefs += 1
    return True


def _declare_values(api: Api, files: list[tuple[str, str]], structs: dict, mapper: _Mapper):
    """Structs and typedefs, each once the types it uses are known (a fixpoint: the order of
    declaration in the header is the order of dependency)."""
    usings = [(m[1], m[2]) for _f, text in files for m in _USING.finditer(text)]
    api.n_cpp_only += sum("std::function" in t for _a, t in usings)  # C++ conveniences
    pending: list = [n for n in structs] + [u for u in usings if "std::function" not in u[1]]
    while pending:
        left = [
            item
            for item in pending
            if not (
                _declare_struct(api, structs, item, mapper)
                if isinstance(item, str)
                else _declare_typedef(api, *item, mapper)
            )
        ]
        if len(left) == len(pending):
            for item in left:
                what = (
                    f"struct MTL{item}" if isinstance(item, str) else f"using {item[0]} = {item[1]}"
                )
                api.skipped.append(f"{what}: a member type has no Objective-C spelling")
            break
        pending = left


def _declare_methods(api: Api, files, structs: dict, selectors: dict, mapper: _Mapper) -> None:
    """One Method per message-sending inline whose types all map."""
    for fname, text in files:
        for ret, cls, fn, params, _trailer, body in _inline_defs(text):
            if cls in structs:
                continue
            sig = f"MTL::{cls}::{fn}({' '.join(params.split())})"
            msg = _message(body)
            if msg is None:  # std::function conveniences, alloc/init: no message of their own
                api.n_cpp_only += 1
                continue
            is_class, accessor, args = msg
            if cls not in api.types:
                raise fail(f"{fname}: {sig}: expected a Metal class declaration, got none")
            if accessor not in selectors:
                raise fail(f"{fname}: {sig}: expected selector {accessor} in MTLHeaderBridge.hpp")
            selector = selectors[accessor]
            ps = [_param(p) for p in _split(params)]
            why = None
            if [n for _t, n, _s in ps] != args:
                why = f"arguments passed as {args}, not the parameters"
            elif selector.count(":") != len(ps):
                why = f"selector {selector} takes {selector.count(':')} arguments, not {len(ps)}"
            mapped = [(mapper.objc(t, bool(s)), f"{n}_" if n in _RESERVED else n) for t, n, s in ps]
            ret_objc = mapper.objc(ret)
            bad = [t for (m_, _n), (t, _n2, _s) in zip(mapped, ps, strict=True) if m_ is None]
            if why is None and (ret_objc is None or bad):
                why = f"no Objective-C type for {(bad or [ret])[0]!r}"
            if why is not None:
                api.skipped.append(f"MTL{cls}: {sig}: {why}")
                continue
            for (owner, sel, i), (cpp, apple) in _APPLE_PARAMS.items():
                if (owner, sel) == (cls, selector) and mapped[i][0] == cpp:
                    mapped[i] = (apple, mapped[i][1])
            meth = Method(selector, is_class, ret_objc, mapped)  # type: ignore[arg-type]
            prior = api.types[cls].methods.setdefault((is_class, selector), meth)
            if prior.decl() != meth.decl():
                api.skipped.append(
                    f"MTL{cls}: {sig}: {selector} already declared as {prior.decl()}"
                )
