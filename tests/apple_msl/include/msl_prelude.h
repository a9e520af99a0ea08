// The Metal Shading Language's own keywords and built-in types: what Apple's compiler knows before
// any #include. scripts/check_msl_apple.py force-includes this file (-include) into every
// translation unit it compiles; the library (<metal_stdlib>) is the separate stand-in next to it.
// Written from Apple's Metal Shading Language Specification (3.1): its predefined macros, scalar
// data types, address spaces, and function and parameter attributes. The preprocessor-level
// handling of `threadgroup`, `thread` and `kernel` lives in the check's clang plugin
// (tests/apple_msl/plugin/msl_lex.cpp), which these macros call through _Pragma.
#pragma once
#pragma clang system_header

// MSL 3.1 (macOS 14): the oldest version that has everything the stand-in declares (bfloat).
#define __METAL_VERSION__ 310
#define __METAL_MACOS__ 1

// Address spaces. `device` and `constant` are clang address spaces 1 and 2, `threadgroup` is 3:
// a pointer or reference into one never converts to another, as in MSL, and diagnostics print these
// macro names. `thread` is clang's default address space; the plugin records where it is written,
// because MSL requires an explicit address space on every pointer and reference type. A
// `threadgroup` variable declared in a function body gets static storage and no constructor call
// from the plugin (clang allows no address space on automatic variables and has no constructor for
// an object outside the default one); the plugin then checks it is in a kernel, uninitialized.
#define device __attribute__((address_space(1)))
#define constant __attribute__((address_space(2)))
#define threadgroup _Pragma("metallic_msl threadgroup")
#define thread _Pragma("metallic_msl thread")

// The `kernel` function qualifier; the plugin turns it into the [[kernel]] attribute it
// registers, or leaves the identifier alone inside an attribute list ([[kernel]]).
#define kernel _Pragma("metallic_msl kernel")

// Built-in floating-point types: half (IEEE binary16, literal suffix h) and bfloat (MSL 3.1).
typedef _Float16 half;
typedef __bf16 bfloat;
half operator""h(long double value);
half operator""h(unsigned long long value);
