// Semantic part of the Apple-path MSL check's plugin: the Metal attributes (registered with the
// subjects MSL gives them) and the MSL rules clang does not know, checked on the finished AST of
// shader code (declarations in system headers, i.e. the stand-in library, are skipped).
//
// Attributes (MSL spec, "Function and variable declarations"): [[kernel]] and [[host_name("name")]] on functions;
// [[buffer(i)]],
// [[threadgroup(i)]] and the built-in inputs ([[thread_position_in_grid]], ...) on parameters.
// Rules: kernels return void, are not members, and every parameter carries exactly one of those
// attributes with a type MSL accepts for it (buffer: device/constant pointer or reference;
// threadgroup: threadgroup pointer or reference; built-ins: uint/ushort, vectors where MSL allows);
// buffer and threadgroup indices lie in 0..30 and are unique per kernel; host names are unique;
// pointer and reference types name their address space; program-scope variables live in the
// constant address space and are initialized; threadgroup variables are declared only in kernels
// and have no initializer; no cast changes an address space; nothing writes to constant memory;
// swizzles use xyzw or rgba; no double (declared or promoted to), long long, goto, new/delete,
// noexcept(), virtual or thread_local (MSL spec: "Restrictions" of C++, "Scalar data types").
#include <map>
#include <set>

#include "clang/AST/ASTConsumer.h"
#include "clang/AST/ASTContext.h"
#include "clang/AST/Attr.h"
#include "clang/AST/RecursiveASTVisitor.h"
#include "clang/Basic/AddressSpaces.h"
#include "clang/Frontend/CompilerInstance.h"
#include "clang/Frontend/FrontendPluginRegistry.h"
#include "clang/Sema/ParsedAttr.h"
#include "clang/Sema/Sema.h"
#include "msl_plugin.h"

using namespace clang;

namespace metallic_msl {
namespace {

// ------------------------------------------------------------------------------ attributes

enum class Subject { kFunction, kParameter };
enum class Arg { kNone, kIndex, kString };
enum class BuiltinShape { kNotBuiltin, kScalar, kVector };  // uint/ushort; or also their 2- and 3-vectors

struct AttrSpec {
  const char* name;
  Subject subject;
  Arg arg;
  BuiltinShape shape;
  int group;  // built-ins of one group must have the same type (MSL's kernel input rules); 0: none
};

constexpr AttrSpec kAttrs[] = {
    {"kernel", Subject::kFunction, Arg::kNone, BuiltinShape::kNotBuiltin, 0},
    {"host_name", Subject::kFunction, Arg::kString, BuiltinShape::kNotBuiltin, 0},
    {"buffer", Subject::kParameter, Arg::kIndex, BuiltinShape::kNotBuiltin, 0},
    {"threadgroup", Subject::kParameter, Arg::kIndex, BuiltinShape::kNotBuiltin, 0},
    {"thread_position_in_grid", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 1},
    {"threads_per_grid", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 1},
    {"thread_position_in_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 2},
    {"threads_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 2},
    {"dispatch_threads_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 2},
    {"threadgroup_position_in_grid", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 3},
    {"threadgroups_per_grid", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 3},
    {"grid_origin", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 0},
    {"grid_size", Subject::kParameter, Arg::kNone, BuiltinShape::kVector, 0},
    {"thread_index_in_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"thread_index_in_simdgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"thread_index_in_quadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"simdgroup_index_in_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"simdgroups_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"dispatch_simdgroups_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"quadgroup_index_in_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"quadgroups_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"dispatch_quadgroups_per_threadgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"threads_per_simdgroup", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
    {"thread_execution_width", Subject::kParameter, Arg::kNone, BuiltinShape::kScalar, 0},
};
constexpr unsigned kMaxBindIndex = 30;  // 31 buffer / threadgroup binding slots per kernel

const AttrSpec* find_spec(StringRef name) {
  for (const AttrSpec& a : kAttrs)
    if (name == a.name) return &a;
  return nullptr;
}

unsigned error_id(DiagnosticsEngine& d) { return d.getCustomDiagID(DiagnosticsEngine::Error, "%0"); }

class MslAttrInfo : public ParsedAttrInfo {
 public:
  MslAttrInfo() {
    static const std::vector<Spelling> spellings = [] {
      std::vector<Spelling> s;
      for (const AttrSpec& a : kAttrs) s.push_back({ParsedAttr::AS_CXX11, a.name});
      return s;
    }();
    Spellings = spellings;
    OptArgs = 1;
  }

  bool diagAppertainsToDecl(Sema& s, const ParsedAttr& attr, const Decl* d) const override {
    const AttrSpec* spec = find_spec(attr.getAttrName()->getName());
    const bool ok =
        spec->subject == Subject::kFunction ? isa<FunctionDecl>(d) && !isa<CXXMethodDecl>(d) : isa<ParmVarDecl>(d);
    if (!ok) {
      s.Diag(attr.getLoc(), error_id(s.getDiagnostics()))
          << (llvm::Twine("'") + spec->name + "' attribute only applies to " +
              (spec->subject == Subject::kFunction ? "non-member functions" : "kernel function parameters"))
                 .str();
    }
    return ok;
  }

  AttrHandling handleDeclAttribute(Sema& s, Decl* d, const ParsedAttr& attr) const override {
    const AttrSpec* spec = find_spec(attr.getAttrName()->getName());
    std::string note = std::string(kAnnotationPrefix) + spec->name;
    auto fail = [&](const std::string& what) {
      s.Diag(attr.getLoc(), error_id(s.getDiagnostics())) << ("'" + std::string(spec->name) + "' " + what);
      return AttributeNotApplied;
    };
    const unsigned want = spec->arg == Arg::kNone ? 0 : 1;
    if (attr.getNumArgs() != want)
      return fail(want == 0 ? "attribute takes no arguments" : "attribute takes one argument");
    if (spec->arg == Arg::kString) {
      const auto* lit = dyn_cast<StringLiteral>(attr.getArgAsExpr(0)->IgnoreParenCasts());
      if (lit == nullptr) return fail("attribute expects a string literal");
      note += "=" + lit->getString().str();
    } else if (spec->arg == Arg::kIndex) {
      Expr* e = attr.getArgAsExpr(0);
      if (e->isValueDependent()) {
        note += "=?";
      } else {
        std::optional<llvm::APSInt> v = e->getIntegerConstantExpr(s.Context);
        if (!v) return fail("attribute expects an integer constant index");
        if (v->isNegative() || v->getZExtValue() > kMaxBindIndex) return fail("index must lie in 0..30");
        note += "=" + std::to_string(v->getZExtValue());
      }
    }
    d->addAttr(AnnotateAttr::Create(s.Context, note, nullptr, 0, attr.getRange()));
    return AttributeApplied;
  }
};

// The attribute the preprocessor part puts on a `threadgroup` declaration it made static.
class ThreadgroupStaticInfo : public ParsedAttrInfo {
 public:
  ThreadgroupStaticInfo() {
    static constexpr Spelling kSpelling[] = {{ParsedAttr::AS_GNU, kThreadgroupStaticAttr}};
    Spellings = kSpelling;
  }

  bool diagAppertainsToDecl(Sema&, const ParsedAttr&, const Decl* d) const override { return isa<VarDecl>(d); }

  AttrHandling handleDeclAttribute(Sema& s, Decl* d, const ParsedAttr& attr) const override {
    d->addAttr(AnnotateAttr::Create(s.Context, kThreadgroupStatic, nullptr, 0, attr.getRange()));
    const QualType t = cast<VarDecl>(d)->getType();
    if (t.getAddressSpace() == getLangASFromTargetAS(kThreadgroupAS))  // the object, not a pointer to one
      d->addAttr(LoaderUninitializedAttr::CreateImplicit(s.Context, attr.getRange()));
    return AttributeApplied;
  }
};

// --------------------------------------------------------------------------- AST helpers

unsigned address_space(QualType t) {
  const LangAS as = t.getAddressSpace();
  if (as == LangAS::Default) return 0;
  return isTargetAddressSpace(as) ? toTargetAddressSpace(as) : 99;
}

std::vector<std::string> annotations(const Decl* d) {
  std::vector<std::string> out;
  if (d == nullptr) return out;
  for (const auto* a : d->specific_attrs<AnnotateAttr>())
    if (a->getAnnotation().starts_with(kAnnotationPrefix)) out.push_back(a->getAnnotation().str());
  return out;
}

bool has_annotation(const Decl* d, StringRef name) {
  for (const auto* a : d->specific_attrs<AnnotateAttr>())
    if (a->getAnnotation() == name) return true;
  return false;
}

bool is_kernel(const FunctionDecl* f) {
  const std::string k = std::string(kAnnotationPrefix) + "kernel";
  if (has_annotation(f, k)) return true;
  const FunctionDecl* pattern = f->getTemplateInstantiationPattern();
  return pattern != nullptr && has_annotation(pattern, k);
}

// "msl.buffer=3" -> {"buffer", "3"}
std::pair<std::string, std::string> split(const std::string& note) {
  const std::string body = note.substr(std::char_traits<char>::length(kAnnotationPrefix));
  const size_t eq = body.find('=');
  return eq == std::string::npos ? std::make_pair(body, std::string())
                                 : std::make_pair(body.substr(0, eq), body.substr(eq + 1));
}

class Checks : public RecursiveASTVisitor<Checks> {
 public:
  explicit Checks(ASTContext& ctx) : sm_(ctx.getSourceManager()), diags_(ctx.getDiagnostics()) {}

  bool shouldVisitTemplateInstantiations() const { return true; }

  void error(SourceLocation loc, const std::string& message) {
    if (!seen_.insert({loc.getRawEncoding(), message}).second) return;
    diags_.Report(loc, diags_.getCustomDiagID(DiagnosticsEngine::Error, "%0")) << message;
  }

  bool user_code(SourceLocation loc) const { return loc.isValid() && !sm_.isInSystemHeader(sm_.getExpansionLoc(loc)); }

  // -------------------------------------------------------------- functions and kernels

  bool VisitFunctionDecl(FunctionDecl* f) {
    if (!user_code(f->getLocation())) return true;
    check_type(f->getReturnType(), f->getLocation(), "return type");
    const TemplateSpecializationKind tsk = f->getTemplateSpecializationKind();
    if (tsk == TSK_ExplicitInstantiationDefinition || tsk == TSK_ExplicitInstantiationDeclaration)
      explicit_instantiations_.push_back(f);
    for (const std::string& note : annotations(f)) {
      auto [name, value] = split(note);
      if (name == "host_name") host_names_.push_back({value, f->getLocation()});
    }
    if (!is_kernel(f)) {
      for (const std::string& note : annotations(f))
        if (split(note).first == "host_name")
          error(f->getLocation(), "[[host_name]] applies only to a [[kernel]] function");
      for (const ParmVarDecl* p : f->parameters())
        for (const std::string& note : annotations(p))
          error(p->getLocation(),
                "'" + split(note).first + "' attribute only applies to parameters of a [[kernel]] function");
      return true;
    }
    check_kernel(f);
    return true;
  }

  void check_kernel(const FunctionDecl* f) {
    if (isa<CXXMethodDecl>(f)) error(f->getLocation(), "a kernel function cannot be a class member");
    if (f->isVariadic()) error(f->getLocation(), "a kernel function cannot be variadic");
    const QualType ret = f->getReturnType();
    if (!ret->isDependentType() && !ret->isVoidType()) error(f->getLocation(), "a kernel function must return void");
    std::map<std::string, std::set<std::string>> indices;  // "buffer" / "threadgroup" -> used indices
    std::map<int, std::pair<QualType, std::string>> group_type;
    for (const ParmVarDecl* p : f->parameters()) {
      const std::vector<std::string> notes = annotations(p);
      if (notes.empty()) {
        error(p->getLocation(), "kernel parameter '" + p->getNameAsString() +
                                    "' needs [[buffer(i)]], [[threadgroup(i)]] or a built-in input attribute");
        continue;
      }
      if (notes.size() > 1) {
        error(p->getLocation(), "kernel parameter '" + p->getNameAsString() + "' has more than one Metal attribute");
        continue;
      }
      auto [name, value] = split(notes.front());
      const QualType t = p->getType();
      if (name == "buffer" || name == "threadgroup") {
        if (!value.empty() && value != "?" && !indices[name].insert(value).second)
          error(p->getLocation(), "[[" + name + "(" + value + ")]] is used by two parameters of this kernel");
        if (t->isDependentType() && !t->isPointerType() && !t->isReferenceType()) continue;
        const bool indirect = t->isPointerType() || t->isReferenceType();
        const unsigned as = indirect ? address_space(t->getPointeeType()) : 0;
        const bool ok =
            name == "buffer" ? indirect && (as == kDeviceAS || as == kConstantAS) : indirect && as == kThreadgroupAS;
        if (!ok)
          error(p->getLocation(), "[[" + name + "(i)]] parameter '" + p->getNameAsString() + "' must be a " +
                                      (name == "buffer" ? "device or constant" : "threadgroup") +
                                      " pointer or reference");
        continue;
      }
      const AttrSpec* spec = find_spec(name);
      if (spec == nullptr || spec->shape == BuiltinShape::kNotBuiltin || t->isDependentType()) continue;
      if (!builtin_type_ok(t, spec->shape))
        error(p->getLocation(),
              "[[" + name + "]] parameter '" + p->getNameAsString() + "' must be " +
                  (spec->shape == BuiltinShape::kVector ? "uint, uint2, uint3, ushort, ushort2 or ushort3"
                                                        : "uint or ushort"));
      if (spec->group != 0) {
        auto [it, fresh] = group_type.insert({spec->group, {t.getCanonicalType().getUnqualifiedType(), name}});
        if (!fresh && it->second.first != t.getCanonicalType().getUnqualifiedType())
          error(p->getLocation(), "[[" + name + "]] and [[" + it->second.second + "]] must have the same type");
      }
    }
  }

  static bool builtin_type_ok(QualType t, BuiltinShape shape) {
    QualType c = t.getCanonicalType().getUnqualifiedType();
    if (const auto* v = c->getAs<ExtVectorType>()) {
      if (shape != BuiltinShape::kVector || v->getNumElements() > 3) return false;
      c = v->getElementType();
    }
    return c->isSpecificBuiltinType(BuiltinType::UInt) || c->isSpecificBuiltinType(BuiltinType::UShort);
  }

  // ----------------------------------------------------------------------------- variables

  bool VisitVarDecl(VarDecl* v) {
    if (!user_code(v->getLocation()) || isa<ParmVarDecl>(v) || v->isInvalidDecl()) return true;
    check_type(v->getType(), v->getLocation(), "variable");
    if (v->getTSCSpec() != TSCS_unspecified) error(v->getLocation(), "thread_local is not supported in Metal");
    const unsigned as = address_space(v->getType());
    if (v->isStaticLocal()) {
      const bool injected = has_annotation(v, kThreadgroupStatic);
      if (as == kThreadgroupAS) {
        check_threadgroup_variable(v);
      } else if (!injected && as != kConstantAS) {
        error(v->getLocation(), "a static variable must reside in the constant address space");
      }
      return true;
    }
    if (v->isFileVarDecl() || v->isStaticDataMember()) {
      if (as != kConstantAS) {
        error(v->getLocation(), "program scope variable must reside in constant address space");
      } else if (!written_initializer(v) && !v->hasExternalStorage() && !v->getType()->isDependentType()) {
        error(v->getLocation(), "variable in constant address space must be initialized");
      }
    }
    return true;
  }

  void check_threadgroup_variable(const VarDecl* v) {
    const auto* f = dyn_cast_or_null<FunctionDecl>(v->getParentFunctionOrMethod());
    if (f == nullptr || !is_kernel(f))
      error(v->getLocation(),
            "threadgroup variable '" + v->getNameAsString() + "' must be declared in a kernel function");
    if (written_initializer(v))
      error(v->getLocation(), "threadgroup variable '" + v->getNameAsString() + "' cannot be initialized");
  }

  // An initializer in the source, not the default construction clang adds to a class-type variable.
  static bool written_initializer(const VarDecl* v) {
    const Expr* init = v->getInit();
    if (init == nullptr) return false;
    const auto* ctor = dyn_cast<CXXConstructExpr>(init->IgnoreImplicit());
    return ctor == nullptr || ctor->getNumArgs() != 0 || ctor->isListInitialization() ||
           ctor->getParenOrBraceRange().isValid();
  }

  bool VisitFieldDecl(FieldDecl* d) {
    if (user_code(d->getLocation())) check_type(d->getType(), d->getLocation(), "field");
    return true;
  }

  bool VisitParmVarDecl(ParmVarDecl* p) {
    if (user_code(p->getLocation())) check_type(p->getType(), p->getLocation(), "parameter");
    return true;
  }

  // Types MSL lacks ("Scalar data types"): double and long long, also inside pointers, arrays and vectors.
  void check_type(QualType t, SourceLocation loc, const char* what) {
    if (t.isNull() || t->isDependentType()) return;
    QualType c = t.getCanonicalType();
    while (true) {
      if (c->isPointerType() || c->isReferenceType()) {
        c = c->getPointeeType().getCanonicalType();
      } else if (const ArrayType* a = c->getAsArrayTypeUnsafe()) {
        c = a->getElementType().getCanonicalType();
      } else if (const auto* v = c->getAs<VectorType>()) {
        c = v->getElementType().getCanonicalType();
      } else {
        break;
      }
    }
    const auto* b = c->getAs<BuiltinType>();
    if (b == nullptr) return;
    switch (b->getKind()) {
      case BuiltinType::Double:
      case BuiltinType::LongDouble:
      case BuiltinType::Float128:
      case BuiltinType::Ibm128:
      case BuiltinType::LongLong:
      case BuiltinType::ULongLong:
      case BuiltinType::Int128:
      case BuiltinType::UInt128:
        error(loc, std::string(what) + " of type '" + t.getAsString() + "': Metal has no '" +
                       QualType(b, 0).getAsString() + "'");
        return;
      default: return;
    }
  }

  // ------------------------------------------------------ pointers, references and casts

  bool VisitPointerTypeLoc(PointerTypeLoc tl) {
    check_pointee(tl.getPointeeLoc(), tl.getStarLoc(), "pointer");
    return true;
  }
  bool VisitLValueReferenceTypeLoc(LValueReferenceTypeLoc tl) {
    check_pointee(tl.getPointeeLoc(), tl.getAmpLoc(), "reference");
    return true;
  }
  bool VisitRValueReferenceTypeLoc(RValueReferenceTypeLoc tl) {
    check_pointee(tl.getPointeeLoc(), tl.getAmpAmpLoc(), "reference");
    return true;
  }

  // MSL requires an address space on every pointer and reference type; `thread` counts when the
  // token watcher saw it before this declarator's `*` / `&`.
  void check_pointee(TypeLoc pointee, SourceLocation op, const char* what) {
    if (!user_code(op)) return;
    const QualType t = pointee.getType();
    if (t.isNull() || t->isDependentType() || t->isFunctionType()) return;
    const TypeLoc bare = pointee.getUnqualifiedLoc();
    if (bare.getAs<AutoTypeLoc>() || bare.getAs<DecltypeTypeLoc>()) return;  // deduced, not written
    if (address_space(t) != 0 || state().thread_pointers.contains(op.getRawEncoding())) return;
    error(op, std::string(what) + " type must have explicit address space qualifier");
  }

  bool VisitExplicitCastExpr(ExplicitCastExpr* e) {
    if (!user_code(e->getExprLoc())) return true;
    check_type(e->getTypeAsWritten(), e->getExprLoc(), "cast");
    if (e->getCastKind() == CK_AddressSpaceConversion)
      error(e->getExprLoc(), "cannot cast '" + e->getSubExpr()->getType().getAsString() + "' to '" +
                                 e->getType().getAsString() + "': a cast cannot change the address space");
    return true;
  }

  // Arithmetic promoted to double (`x * 0.5` with a float x): Metal has no double to promote to.
  bool VisitImplicitCastExpr(ImplicitCastExpr* e) {
    if (e->getCastKind() != CK_FloatingCast && e->getCastKind() != CK_IntegralToFloating) return true;
    if (!user_code(e->getExprLoc()) || e->getType()->isDependentType()) return true;
    const auto* b = e->getType().getCanonicalType()->getAs<BuiltinType>();
    if (b != nullptr && (b->getKind() == BuiltinType::Double || b->getKind() == BuiltinType::LongDouble))
      error(e->getExprLoc(), "'" + e->getSubExpr()->getType().getUnqualifiedType().getAsString() + "' converted to '" +
                                 e->getType().getAsString() + "': Metal has no double");
    return true;
  }

  bool VisitBinaryOperator(BinaryOperator* b) {
    if (b->isAssignmentOp()) check_write(b->getLHS(), b->getOperatorLoc());
    return true;
  }
  bool VisitUnaryOperator(UnaryOperator* u) {
    if (u->isIncrementDecrementOp()) check_write(u->getSubExpr(), u->getOperatorLoc());
    return true;
  }
  void check_write(const Expr* target, SourceLocation loc) {
    if (user_code(loc) && !target->isTypeDependent() && address_space(target->getType()) == kConstantAS)
      error(loc, "cannot write to the constant address space");
  }

  // ------------------------------------------------------------ swizzles and restrictions

  bool VisitExtVectorElementExpr(ExtVectorElementExpr* e) {
    if (!user_code(e->getAccessorLoc())) return true;
    const StringRef name = e->getAccessor().getName();
    const bool xyzw = name.find_first_not_of("xyzw") == StringRef::npos;
    const bool rgba = name.find_first_not_of("rgba") == StringRef::npos;
    if (name.empty() || name.size() > 4 || (!xyzw && !rgba))
      error(e->getAccessorLoc(), "'." + name.str() + "' is not a Metal vector swizzle (xyzw or rgba, 1 to 4 letters)");
    return true;
  }

  bool VisitGotoStmt(GotoStmt* s) { return restricted(s->getBeginLoc(), "'goto' is"); }
  bool VisitIndirectGotoStmt(IndirectGotoStmt* s) { return restricted(s->getBeginLoc(), "'goto' is"); }
  bool VisitCXXNewExpr(CXXNewExpr* e) { return restricted(e->getBeginLoc(), "'new' is"); }
  bool VisitCXXDeleteExpr(CXXDeleteExpr* e) { return restricted(e->getBeginLoc(), "'delete' is"); }
  bool VisitCXXNoexceptExpr(CXXNoexceptExpr* e) { return restricted(e->getBeginLoc(), "the noexcept operator is"); }
  bool VisitCXXMethodDecl(CXXMethodDecl* m) {
    return m->isVirtual() ? restricted(m->getLocation(), "virtual functions are") : true;
  }
  bool restricted(SourceLocation loc, const char* what) {
    if (user_code(loc)) error(loc, std::string(what) + " not supported in Metal (MSL spec: C++ restrictions)");
    return true;
  }

  // ---------------------------------------- explicit-instantiation attributes and host names

  void finish() {
    const auto& insts = state().instantiations;
    std::map<unsigned, size_t> by_token;
    for (size_t i = 0; i < insts.size(); ++i)
      for (unsigned raw : insts[i].decl_tokens) by_token.emplace(raw, i);
    std::set<size_t> matched;
    for (const FunctionDecl* f : explicit_instantiations_) {
      auto it = by_token.find(f->getPointOfInstantiation().getRawEncoding());
      if (it == by_token.end()) continue;
      matched.insert(it->second);
      const InstantiationAttrs& a = insts[it->second];
      if (!a.valid) continue;
      if ((a.kernel || a.host_name_loc.isValid()) && !is_kernel(f))
        error(a.list_loc, "[[host_name]] / [[kernel]] on the instantiation of '" + f->getQualifiedNameAsString() +
                              "', which is not a [[kernel]] function template");
      if (a.host_name_loc.isValid()) host_names_.push_back({a.host_name, a.host_name_loc});
    }
    for (size_t i = 0; i < insts.size(); ++i) {
      if (!insts[i].valid)
        error(insts[i].list_loc,
              "the attribute list of an explicit instantiation may hold only [[host_name(\"name\")]] and [[kernel]]");
      else if (matched.count(i) == 0 && !diags_.hasErrorOccurred())
        error(insts[i].list_loc, "[[host_name]] / [[kernel]] on an explicit instantiation that is not a function's");
    }
    std::map<std::string, SourceLocation> first;
    for (const auto& [name, loc] : host_names_) {
      auto [it, fresh] = first.emplace(name, loc);
      if (!fresh && it->second != loc) error(loc, "host name '" + name + "' names two kernels");
    }
  }

 private:
  SourceManager& sm_;
  DiagnosticsEngine& diags_;
  std::set<std::pair<unsigned, std::string>> seen_;
  std::vector<const FunctionDecl*> explicit_instantiations_;
  std::vector<std::pair<std::string, SourceLocation>> host_names_;
};

class Consumer : public ASTConsumer {
 public:
  void HandleTranslationUnit(ASTContext& ctx) override {
    Checks checks(ctx);
    checks.TraverseDecl(ctx.getTranslationUnitDecl());
    checks.finish();
  }
};

class Action : public PluginASTAction {
 protected:
  std::unique_ptr<ASTConsumer> CreateASTConsumer(CompilerInstance& ci, StringRef) override {
    watch_tokens(ci);
    return std::make_unique<Consumer>();
  }
  bool ParseArgs(const CompilerInstance&, const std::vector<std::string>&) override { return true; }
  ActionType getActionType() override { return AddBeforeMainAction; }
};

}  // namespace
}  // namespace metallic_msl

static clang::ParsedAttrInfoRegistry::Add<metallic_msl::ThreadgroupStaticInfo> kThreadgroupStaticInfo(
    metallic_msl::kThreadgroupStaticAttr, "threadgroup variable in a function body");
static clang::ParsedAttrInfoRegistry::Add<metallic_msl::MslAttrInfo> kAttrInfo("metallic_msl", "Metal attributes");
static clang::FrontendPluginRegistry::Add<metallic_msl::Action> kAction("metallic_msl", "Apple-path MSL checks");
