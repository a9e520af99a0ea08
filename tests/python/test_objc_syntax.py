"""The Metal device's Objective-C++ (native/metal/), checked on Linux where it is never built.

scripts/check_objc.sh type-checks metal_device.mm with clang-19 against GNUstep Foundation and
Apple's Metal API as metal-cpp declares it: native/metal_linux/metal_api_header.py generates
<Metal/Metal.h> from metal-cpp (scripts/fetch_metal_cpp.sh, through pip). The references here are
Apple's documented Objective-C signatures and metal-cpp's own text (read with a separate, simpler
regex); broken copies of the device show the check catches what it claims to catch.
native/metal/embed_shaders.py produces the shader source the device compiles at first use.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emu_harness import IN_CI, unless_available

ROOT = Path(__file__).resolve().parents[2]
DEVICE_MM = ROOT / "native/metal/metal_device.mm"

NEEDS_OBJC = unless_available(
    None
    if shutil.which("clang++-19")
    and shutil.which("gnustep-config")
    and Path("/usr/include/Block.h").exists()
    else "needs clang++-19 (scripts/install_clang.sh), gnustep-config and Block.h "
    "(apt-get install libgnustep-base-dev libblocksruntime-dev)"
)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _embed_shaders():
    return _load("embed_shaders", ROOT / "native/metal/embed_shaders.py")


def _api_header():
    return _load("metal_api_header", ROOT / "native/metal_linux/metal_api_header.py")


@pytest.fixture(scope="module")
def metal_cpp() -> Path:
    """metal-cpp from the cache; fetched through pip only under CI or METALLIC_TEST_NETWORK=1."""
    script = ["bash", "scripts/fetch_metal_cpp.sh"]
    r = subprocess.run([*script, "--offline"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        if not (IN_CI or os.environ.get("METALLIC_TEST_NETWORK") == "1"):
            pytest.skip("metal-cpp not cached: run scripts/fetch_metal_cpp.sh (or set "
                        "METALLIC_TEST_NETWORK=1)")  # fmt: skip
        r = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def metal_api(metal_cpp, tmp_path_factory) -> Path:
    """The generated include folder (holds Metal/Metal.h)."""
    out = tmp_path_factory.mktemp("metal_api")
    assert _api_header().main(["--metal-cpp", str(metal_cpp), "--out", str(out)]) == 0
    return out


def _check(files: list[Path], api: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "METALLIC_METAL_API_INCLUDE": str(api)}
    cmd = ["bash", "scripts/check_objc.sh", *map(str, files)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_embedded_source_holds_every_kernel_and_no_quoted_include():
    src = _embed_shaders().flatten(ROOT / "shaders", [ROOT / "native"])
    assert not re.search(r'^\s*#\s*include\s+"', src, re.M)  # newLibraryWithSource resolves none
    kernels = set()
    for f in (ROOT / "shaders").glob("*.metal"):
        kernels |= set(re.findall(r'METALLIC_KERNEL\("(\w+)"', f.read_text()))
    assert kernels and kernels == set(re.findall(r'METALLIC_KERNEL\("(\w+)"', src))
    # Each shared header once (#pragma once honoured by inlining): its structs are defined once.
    assert src.count("struct GemvArgs {") == 1


def test_embed_shaders_names_a_missing_include(tmp_path):
    (tmp_path / "a.metal").write_text('#include "nope.h"\n')
    with pytest.raises(
        SystemExit, match=r'\[embed_shaders\] .*a\.metal: include "nope\.h" not found'
    ):
        _embed_shaders().flatten(tmp_path, [])


@NEEDS_OBJC
def test_metal_device_mm_passes_the_syntax_check(metal_cpp):
    """The whole script as .ci/run runs it: fetch (cached by the fixture), generate, compile."""
    r = subprocess.run(
        ["bash", "scripts/check_objc.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


# Apple's documented Objective-C declarations (developer.apple.com/documentation/metal), as the
# generator spells them (no nullability). The no-copy pointer is `void*` as Apple has it, where
# metal-cpp says `const void*`.
APPLE_DECLARATIONS = [
    "- (id<MTLBuffer>)newBufferWithBytesNoCopy:(void*)pointer length:(NSUInteger)length "
    "options:(MTLResourceOptions)options deallocator:(void (^)(void*, NSUInteger))deallocator;",
    "- (id<MTLBuffer>)newBufferWithLength:(NSUInteger)length options:(MTLResourceOptions)options;",
    "- (id<MTLLibrary>)newLibraryWithSource:(NSString*)source options:(MTLCompileOptions*)options "
    "error:(NSError**)error;",
    "- (id<MTLLibrary>)newLibraryWithURL:(NSURL*)url error:(NSError**)error;",
    "- (void)setBuffer:(id<MTLBuffer>)buffer offset:(NSUInteger)offset atIndex:(NSUInteger)index;",
    "- (void)dispatchThreadgroups:(MTLSize)threadgroupsPerGrid "
    "threadsPerThreadgroup:(MTLSize)threadsPerThreadgroup;",
    "- (MTLCommandBufferStatus)status;",
    "@interface MTLCompileOptions : NSObject <NSCopying>",
    "@protocol MTLBuffer <MTLResource>",
    "@protocol MTLComputeCommandEncoder <MTLCommandEncoder>",
    "id<MTLDevice> MTLCreateSystemDefaultDevice(void);",
    "typedef NSUInteger MTLResourceOptions;",  # NS_OPTIONS in C++: `a | b` stays the type
    "typedef enum MTLCommandBufferStatus : NSUInteger {",
]


def test_generated_header_declares_apple_signatures(metal_api):
    text = (metal_api / "Metal/Metal.h").read_text()
    lines = set(text.splitlines())
    for decl in APPLE_DECLARATIONS:
        assert decl in lines, decl


@NEEDS_OBJC
def test_generated_values_match_metal_cpp_and_apple(metal_cpp, metal_api, tmp_path):
    """Every numeric enum value metal-cpp declares, read here by a plain regex, is the generated
    constant's value (static_assert); plus values and types Apple documents."""
    values = {}
    for hpp in sorted((metal_cpp / "Metal").glob("*.hpp")):
        for body in re.findall(
            r"_MTL_(?:ENUM|OPTIONS)\([^)]*\)\s*\{(.*?)\};", hpp.read_text(), re.S
        ):
            values.update(re.findall(r"^\s*(\w+)\s*=\s*(-?\d+)\s*,", body, re.M))
    assert len(values) > 700 and values["ResourceStorageModeShared"] == "0"
    asserts = [f'static_assert(MTL{k} == {v}, "{k}");' for k, v in sorted(values.items())]
    probe = tmp_path / "probe.mm"
    probe.write_text("\n".join([
        "#import <Metal/Metal.h>", "#include <type_traits>", *asserts,
        "static_assert(MTLCommandBufferStatusError == 5);",
        "static_assert(MTLResourceStorageModePrivate == (MTLStorageModePrivate << 4));",  # Shift 4
        "static_assert(std::is_same_v<MTLResourceOptions, NSUInteger>);",
        "static_assert(std::is_same_v<std::underlying_type_t<MTLCommandBufferStatus>, NSUInteger>);",
        "static_assert(sizeof(MTLRegion) == 6 * sizeof(NSUInteger));",
        "void probe(id<MTLDevice> d, id<MTLComputeCommandEncoder> e) {",
        "  id<MTLBuffer> b = [d newBufferWithBytesNoCopy:nullptr length:16384",
        "      options:MTLResourceStorageModeShared | MTLResourceHazardTrackingModeUntracked",
        "      deallocator:^(void* p, NSUInteger n) { (void)p; (void)n; }];",
        "  [e setBuffer:b offset:0 atIndex:1];",
        "  MTLRegion r = MTLRegionMake2D(1, 2, 3, 4);",
        "  [e dispatchThreadgroups:r.size threadsPerThreadgroup:MTLSizeMake(32, 1, 1)];",
        "}", ""]))  # fmt: skip
    r = _check([probe], metal_api)
    assert r.returncode == 0, r.stdout + r.stderr


# Broken copies of metal_device.mm: (what, text replaced, replacement, the compiler's complaint).
BROKEN = [
    ("misspelled selector", "newBufferWithLength:", "newBufferWithLenght:",
     r"instance method '-newBufferWithLenght:options:' not found.*-Wobjc-method-access"),
    ("selector of another protocol", "[cmd commit]", "[device_ commit]",
     r"instance method '-commit' not found"),
    ("NSString* for NSUInteger options", "options:MTLResourceStorageModeShared]",
     'options:@"shared"]', r"parameter of type 'MTLResourceOptions'.* of type 'NSString \*'"),
    ("a device for id<MTLBuffer>", "[enc setBuffer:mb offset", "[enc setBuffer:device_ offset",
     r"parameter of type 'id<MTLBuffer>' with an lvalue of type 'id<MTLDevice>'"),
    ("C string for NSString*", "newFunctionWithName:[NSString stringWithUTF8String:kernel]",
     "newFunctionWithName:kernel",
     r"parameter of type 'NSString \*' with an lvalue of type 'const char \*'"),
    ("const pointer for the no-copy buffer", "newBufferWithBytesNoCopy:reinterpret_cast<void*>",
     "newBufferWithBytesNoCopy:reinterpret_cast<const void*>",
     r"parameter of type 'void \*' with an rvalue of type 'const void \*'"),
    ("missing constant", "MTLResourceStorageModeShared]", "MTLResourceStorageModeSharedd]",
     r"undeclared identifier 'MTLResourceStorageModeSharedd'"),
    ("Origin for Size", "threadsPerThreadgroup:MTLSizeMake(", "threadsPerThreadgroup:MTLOriginMake(",
     r"no viable conversion from 'MTLOrigin' to 'MTLSize'"),
]  # fmt: skip


@NEEDS_OBJC
@pytest.mark.parametrize(("what", "old", "new", "error"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_metal_device_fails_the_check(metal_api, tmp_path, what, old, new, error):
    src = DEVICE_MM.read_text()
    assert old in src, f"metal_device.mm changed: update the {what!r} case"
    broken = tmp_path / "metal_device.mm"
    broken.write_text(src.replace(old, new))
    r = _check([broken], metal_api)
    assert r.returncode != 0
    assert re.search(rf"{re.escape(str(broken))}:\d+:\d+: error: .*{error}", r.stderr), r.stderr


@NEEDS_OBJC
def test_list_selectors_names_each_metal_message_and_its_declaration(metal_cpp):
    r = subprocess.run(
        ["bash", "scripts/check_objc.sh", "--list-selectors"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    by_sel = {row[0]: row for row in rows}
    assert by_sel["newBufferWithBytesNoCopy:length:options:deallocator:"][1:3] == [
        "id<MTLDevice>",
        "MTLDevice",
    ]
    assert by_sel["endEncoding"][2] == "MTLCommandEncoder"  # found through the protocol's base
    assert by_sel["MTLCreateSystemDefaultDevice"][2] == "C symbol"
    # Each row's receiver is a Metal type; each selector appears in the device's text.
    src = DEVICE_MM.read_text()
    for row in rows:
        assert "MTL" in row[1] or row[1] == "-", row
        assert all(part in src for part in row[0].split(":") if part), row


def test_generator_is_deterministic(metal_cpp, tmp_path):
    gen = _api_header()
    outs = []
    for i in range(2):
        assert gen.main(["--metal-cpp", str(metal_cpp), "--out", str(tmp_path / str(i))]) == 0
        outs.append((tmp_path / str(i) / "Metal/Metal.h").read_bytes())
    assert outs[0] == outs[1]
    api = gen.parse(metal_cpp)  # most of the API has an Objective-C spelling
    assert api.n_methods > 1500 and len(api.skipped) < 50


SYNTHETIC = {
    "MTLHeaderBridge.hpp": """
_MTL_PRIVATE_DEF_CLS(MTLThingDescriptor);
_MTL_PRIVATE_DEF_PRO(MTLThing);
_MTL_PRIVATE_DEF_SEL(descriptor, "descriptor");
_MTL_PRIVATE_DEF_SEL(newThingWithLength_options_handler_,
    "newThingWithLength:options:handler:");
_MTL_PRIVATE_DEF_SEL(size, "size");
_MTL_PRIVATE_DEF_SEL(surface, "surface");
_MTL_PRIVATE_DEF_SEL(setLabel_, "setLabel:");
""",
    "MTLPrivate.hpp": "",
    "MTLThing.hpp": """
namespace MTL
{
_MTL_ENUM(NS::UInteger, ThingStatus) {
    ThingStatusIdle = 0,
    ThingStatusBusy = 7,
};
_MTL_OPTIONS(NS::UInteger, ThingOptions) {
    ThingOptionA = 1,
    ThingOptionAll = NS::UIntegerMax,
};
struct Extent
{
    Extent() = default;
    Extent(NS::UInteger w, NS::UInteger h);
    static Extent Make(NS::UInteger w, NS::UInteger h);
    NS::UInteger w;
    NS::UInteger h;
} _MTL_PACKED;
using ThingHandler = void (^)(class Thing*, NS::Error*);
using ThingFunction = std::function<void(class Thing*)>;
_MTL_CONST(NS::ErrorDomain, ThingErrorDomain);
class ThingDescriptor : public NS::Copying<ThingDescriptor>
{
public:
    static class ThingDescriptor* descriptor();
};
class Thing : public NS::Referencing<Thing>
{
};
}
_MTL_INLINE MTL::Extent::Extent(NS::UInteger _w, NS::UInteger _h)
    : w(_w)
    , h(_h)
{
}
_MTL_INLINE MTL::Extent MTL::Extent::Make(NS::UInteger w, NS::UInteger h)
{
    return Extent(w, h);
}
_MTL_INLINE MTL::ThingDescriptor* MTL::ThingDescriptor::descriptor()
{
    return Object::sendMessage<MTL::ThingDescriptor*>(_MTL_PRIVATE_CLS(MTLThingDescriptor), _MTL_PRIVATE_SEL(descriptor));
}
_MTL_INLINE MTL::Thing* MTL::Thing::newThing(NS::UInteger length, MTL::ThingOptions options, const MTL::ThingHandler handler)
{
    return Object::sendMessage<MTL::Thing*>(this, _MTL_PRIVATE_SEL(newThingWithLength_options_handler_), length, options, handler);
}
_MTL_INLINE MTL::Extent MTL::Thing::size() const
{
    return Object::sendMessage<MTL::Extent>(this, _MTL_PRIVATE_SEL(size));
}
_MTL_INLINE IOSurfaceRef MTL::Thing::surface() const
{
    return Object::sendMessage<IOSurfaceRef>(this, _MTL_PRIVATE_SEL(surface));
}
_MTL_INLINE void MTL::Thing::setLabel(const NS::String* label)
{
    Object::sendMessage<void>(this, _MTL_PRIVATE_SEL(setLabel_), label);
}
_MTL_INLINE void MTL::Thing::run(const ThingFunction& f)
{
    __block ThingFunction g = f;
    newThing(0, 0, ^(Thing* t, NS::Error*) { g(t); });
}
extern "C" MTL::Thing* MTLCreateThing();
""",
}

SYNTHETIC_EXPECTED = """
typedef enum MTLThingStatus : NSUInteger {
  MTLThingStatusIdle = 0,
  MTLThingStatusBusy = 7,
} MTLThingStatus;
---
typedef NSUInteger MTLThingOptions;
enum : NSUInteger {
  MTLThingOptionA = 1,
  MTLThingOptionAll = NSUIntegerMax,
};
---
typedef struct {
  NSUInteger w;
  NSUInteger h;
} MTLExtent;

static inline MTLExtent MTLExtentMake(NSUInteger w, NSUInteger h) {
  MTLExtent made = {w, h};
  return made;
}

typedef void (^MTLThingHandler)(id<MTLThing>, NSError*);
---
extern NSErrorDomain const MTLThingErrorDomain;
id<MTLThing> MTLCreateThing(void);
---
@protocol MTLThing <NSObject>
- (id<MTLThing>)newThingWithLength:(NSUInteger)length options:(MTLThingOptions)options handler:(MTLThingHandler)handler;
- (MTLExtent)size;
- (void)setLabel:(NSString*)label;
@end
---
@interface MTLThingDescriptor : NSObject <NSCopying>
+ (MTLThingDescriptor*)descriptor;
@end
---
//   MTLThing: MTL::Thing::surface(): no Objective-C type for 'IOSurfaceRef'
"""


def test_generator_maps_a_synthetic_metal_cpp(tmp_path):
    """Each construct, from a hand-written metal-cpp excerpt to the Objective-C it stands for."""
    for name, text in SYNTHETIC.items():
        (tmp_path / "mc/Metal").mkdir(parents=True, exist_ok=True)
        (tmp_path / "mc/Metal" / name).write_text(text)
    gen = _api_header()
    assert gen.main(["--metal-cpp", str(tmp_path / "mc"), "--out", str(tmp_path / "out")]) == 0
    header = (tmp_path / "out/Metal/Metal.h").read_text()
    for chunk in SYNTHETIC_EXPECTED.strip().split("\n---\n"):
        assert chunk in header, chunk
    api = gen.parse(tmp_path / "mc")
    assert (api.n_methods, len(api.skipped), api.n_cpp_only) == (4, 1, 2)  # run(), ThingFunction


def test_generator_names_a_missing_metal_cpp(tmp_path):
    with pytest.raises(
        SystemExit, match=r"\[metal_api_header\] --metal-cpp .*: expected metal-cpp"
    ):
        _api_header().main(["--metal-cpp", str(tmp_path), "--out", str(tmp_path / "out")])


def test_fetch_offline_without_a_cache_says_so(tmp_path):
    env = {**os.environ, "METALLIC_CACHE_DIR": str(tmp_path)}
    r = subprocess.run(
        ["bash", "scripts/fetch_metal_cpp.sh", "--offline"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 3
    assert re.search(r"\[fetch_metal_cpp\] cache .*: expected a verified metal-cpp", r.stderr)
    assert not any(tmp_path.iterdir())  # nothing fetched, nothing written


def test_embed_shaders_writes_the_flat_metal_source_for_the_metallib(tmp_path):
    """--metal-out: the same flattened source as the embedded header, for `xcrun metal` (the
    Apple build compiles it into metallic.metallib when the Metal compiler exists)."""
    header, flat = tmp_path / "src.h", tmp_path / "flat.metal"
    mod = _embed_shaders()
    assert (
        mod.main(
            [
                "--out",
                str(header),
                "--metal-out",
                str(flat),
                str(ROOT / "shaders"),
                str(ROOT / "native"),
            ]
        )
        == 0
    )
    text = flat.read_text()
    assert text == mod.flatten(ROOT / "shaders", [ROOT / "native"])
    assert text in header.read_text()
