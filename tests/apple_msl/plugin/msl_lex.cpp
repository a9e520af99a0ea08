// Preprocessor part of the Apple-path MSL check's plugin: the MSL keywords that plain C++17 cannot
// express as macros alone, and the attribute list MSL allows after `template`.
//
// msl_prelude.h defines `threadgroup`, `thread` and `kernel` as _Pragma("metallic_msl <word>"); the
// handler below replaces each by the tokens clang needs, deciding from the token before it (a
// token watcher sees every token the parser receives, in order) and from Sema's current function:
//   threadgroup  after `[` (the [[threadgroup(i)]] attribute): the attribute name itself;
//                starting a statement in a function body (after `;`, `{` or `}`): `static` + the
//                plugin's threadgroup-static attribute + address space 3, since clang allows no
//                address space on an automatic variable (msl_plugin.h; the semantic part then
//                requires a kernel function);
//                elsewhere: address space 3 (printed as `threadgroup` in diagnostics).
//   thread       nothing (the default address space); the watcher records the next `*` / `&` /
//                `&&` of the declarator so the semantic part can require an explicit address space.
//   kernel       after `[`: the attribute name; elsewhere (the keyword form `kernel void f()`):
//                `[[kernel]]`.
// The handler never reads past its own _Pragma (doing so would leave the macro expansion under it).
#include "clang/Basic/DiagnosticParse.h"
#include "clang/Frontend/CompilerInstance.h"
#include "clang/Lex/Lexer.h"
#include "clang/Lex/Pragma.h"
#include "clang/Lex/Preprocessor.h"
#include "clang/Sema/Sema.h"
#include "msl_plugin.h"

using namespace clang;

namespace metallic_msl {

State& state() {
  static State s;
  return s;
}

namespace {

Token g_last;  // the last token the parser received
bool g_have_last = false;

// Scan after `thread` for the declarator's `*` / `&` at nesting depth 0.
struct ThreadScan {
  bool active = false;
  int angle = 0, paren = 0;
} g_thread;

// Explicit-instantiation attribute list after `template`.
enum class Inst { kIdle, kAfterTemplate, kInList, kDecl };
struct InstScan {
  Inst step = Inst::kIdle;
  int square = 0;          // `[` nesting inside the attribute lists
  int paren = 0;           // `(` nesting inside the attribute lists or the declaration
  bool want_name = false;  // the next identifier names an attribute
  std::string current;     // the attribute whose arguments are being read
  int strings = 0;         // string literals in host_name's arguments
  int other_args = 0;      // anything else in an attribute's arguments
} g_inst;

Token make(tok::TokenKind kind, SourceLocation loc) {
  Token t;
  t.startToken();
  t.setKind(kind);
  t.setLocation(loc);
  t.setLength(0);
  return t;
}

Token make_identifier(Preprocessor& pp, StringRef name, SourceLocation loc) {
  Token t = make(tok::identifier, loc);
  IdentifierInfo* ii = pp.getIdentifierInfo(name);
  t.setIdentifierInfo(ii);
  t.setKind(ii->getTokenID());
  return t;
}

Token make_number(StringRef digits, SourceLocation loc) {
  Token t = make(tok::numeric_constant, loc);
  t.setLiteralData(digits.data());
  t.setLength(static_cast<unsigned>(digits.size()));
  return t;
}

// `__attribute__((name(arg)))`; the first token at `begin`, the closing one at `end`.
void append_gnu_attribute(Preprocessor& pp, std::vector<Token>& out, StringRef name, const Token& arg,
                          SourceLocation begin, SourceLocation end) {
  out.push_back(make_identifier(pp, "__attribute__", begin));
  out.push_back(make(tok::l_paren, begin));
  out.push_back(make(tok::l_paren, begin));
  out.push_back(make_identifier(pp, name, begin));
  out.push_back(make(tok::l_paren, begin));
  out.push_back(arg);
  out.push_back(make(tok::r_paren, begin));
  out.push_back(make(tok::r_paren, begin));
  out.push_back(make(tok::r_paren, end));
}

// The location, inside the macro expansion that holds `pragma_loc`, of the `)` closing that
// _Pragma(...): an attribute spanning exactly the expansion is printed under the macro's name.
SourceLocation end_of_pragma_expansion(Preprocessor& pp, SourceLocation pragma_loc) {
  if (!pragma_loc.isMacroID()) return pragma_loc;
  SourceManager& sm = pp.getSourceManager();
  SourceLocation spelled = sm.getSpellingLoc(pragma_loc);
  SourceLocation at = spelled;
  for (int i = 0; i < 3; ++i) {  // `(`, the string, `)`
    std::optional<Token> next = Lexer::findNextToken(at, sm, pp.getLangOpts());
    if (!next) return pragma_loc;
    at = next->getLocation();
  }
  return pragma_loc.getLocWithOffset(static_cast<int>(sm.getFileOffset(at) - sm.getFileOffset(spelled)));
}

bool in_function_body() {
  CompilerInstance* ci = state().ci;
  return ci != nullptr && ci->hasSema() && ci->getSema().getCurFunctionDecl() != nullptr;
}

class MslPragma : public PragmaHandler {
 public:
  MslPragma() : PragmaHandler("metallic_msl") {}

  void HandlePragma(Preprocessor& pp, PragmaIntroducer introducer, Token&) override {
    Token word;
    pp.Lex(word);
    const std::string what = word.getIdentifierInfo() ? word.getIdentifierInfo()->getName().str() : "";
    Token eod;
    pp.Lex(eod);
    const SourceLocation at = introducer.Loc;
    const bool after_bracket = g_have_last && g_last.is(tok::l_square);
    std::vector<Token> out;
    if (what == "threadgroup") {
      if (after_bracket) {
        out.push_back(make_identifier(pp, "threadgroup", at));
      } else {
        if (g_have_last && g_last.isOneOf(tok::semi, tok::l_brace, tok::r_brace) && in_function_body()) {
          out.push_back(make(tok::kw_static, at));
          out.push_back(make_identifier(pp, "__attribute__", at));
          out.push_back(make(tok::l_paren, at));
          out.push_back(make(tok::l_paren, at));
          out.push_back(make_identifier(pp, kThreadgroupStaticAttr, at));
          out.push_back(make(tok::r_paren, at));
          out.push_back(make(tok::r_paren, at));
        }
        static const char three[] = "3";
        append_gnu_attribute(pp, out, "address_space", make_number(three, at), at, end_of_pragma_expansion(pp, at));
      }
    } else if (what == "thread") {
      g_thread = ThreadScan{true, 0, 0};
    } else if (what == "kernel") {
      if (after_bracket || (g_have_last && g_last.is(tok::comma))) {
        out.push_back(make_identifier(pp, "kernel", at));
      } else {
        out.push_back(make(tok::l_square, at));
        out.push_back(make(tok::l_square, at));
        out.push_back(make_identifier(pp, "kernel", at));
        out.push_back(make(tok::r_square, at));
        out.push_back(make(tok::r_square, at));
      }
    } else {
      DiagnosticsEngine& d = pp.getDiagnostics();
      d.Report(word.getLocation(), d.getCustomDiagID(DiagnosticsEngine::Error,
                                                     "[metallic_msl] unknown pragma word '%0': expected "
                                                     "threadgroup, thread or kernel"))
          << what;
      return;
    }
    if (out.empty()) return;
    auto tokens = std::make_unique<Token[]>(out.size());
    std::copy(out.begin(), out.end(), tokens.get());
    // Not marked as re-injected: the parser has not seen these tokens, so the watcher must.
    pp.EnterTokenStream(std::move(tokens), out.size(), /*DisableMacroExpansion=*/true, /*IsReinject=*/false);
  }
};

void watch_thread(const Token& t) {
  if (!g_thread.active) return;
  if (t.is(tok::less)) ++g_thread.angle;
  if (t.is(tok::greater) && g_thread.angle > 0) --g_thread.angle;
  if (t.is(tok::greatergreater)) g_thread.angle = g_thread.angle > 2 ? g_thread.angle - 2 : 0;
  if (t.is(tok::l_paren)) ++g_thread.paren;
  if (t.is(tok::r_paren)) {
    if (g_thread.paren == 0) g_thread.active = false;
    --g_thread.paren;
  }
  if (!g_thread.active || g_thread.angle > 0 || g_thread.paren > 0) return;
  if (t.isOneOf(tok::star, tok::amp, tok::ampamp)) {
    state().thread_pointers.insert(t.getLocation().getRawEncoding());
    g_thread.active = false;
  } else if (t.isOneOf(tok::semi, tok::comma, tok::l_brace, tok::r_brace, tok::equal, tok::l_square, tok::r_square)) {
    g_thread.active = false;
  }
}

void set_attribute_list_error(DiagnosticsEngine& d, diag::Severity severity, SourceLocation loc) {
  // An error's severity can be set only in a clang without assertions (scripts/check_msl_apple.py
  // checks llvm-config --assertion-mode); the mapping covers [loc, next mapping).
  d.setSeverity(diag::err_attributes_not_allowed, severity, loc);
}

// The attribute list after `template` of an explicit instantiation: accepted (its error silenced)
// while it holds only host_name("...") and kernel.
void watch_instantiation(const Token& t, DiagnosticsEngine& d, Preprocessor& pp) {
  State& s = state();
  switch (g_inst.step) {
    case Inst::kIdle:
      if (t.is(tok::kw_template)) g_inst.step = Inst::kAfterTemplate;
      return;
    case Inst::kAfterTemplate:
      if (!t.is(tok::l_square)) {
        g_inst.step = t.is(tok::kw_template) ? Inst::kAfterTemplate : Inst::kIdle;
        return;
      }
      g_inst = InstScan{Inst::kInList, 1, 0, false, "", 0, 0};
      s.instantiations.emplace_back();
      s.instantiations.back().list_loc = t.getLocation();
      set_attribute_list_error(d, diag::Severity::Ignored, t.getLocation());
      return;
    case Inst::kInList: {
      InstantiationAttrs& a = s.instantiations.back();
      if (g_inst.square == 0) {  // between lists
        if (t.is(tok::l_square)) {
          g_inst.square = 1;
          return;
        }
        set_attribute_list_error(d, diag::Severity::Error, t.getLocation());
        g_inst.step = Inst::kDecl;
        g_inst.paren = 0;
        a.decl_tokens.insert(t.getLocation().getRawEncoding());
        return;
      }
      if (t.is(tok::l_square)) {
        if (++g_inst.square == 2) g_inst.want_name = true;
        return;
      }
      if (t.is(tok::r_square)) {
        --g_inst.square;
        return;
      }
      if (g_inst.paren > 0) {  // attribute arguments
        if (t.is(tok::l_paren)) ++g_inst.paren;
        if (t.is(tok::r_paren) && --g_inst.paren == 0) {
          if (g_inst.current != "host_name" || g_inst.strings == 0 || g_inst.other_args != 0) {
            a.valid = false;
            set_attribute_list_error(d, diag::Severity::Error, a.list_loc);
          }
          return;
        }
        if (t.is(tok::string_literal) && g_inst.current == "host_name") {
          std::string text = pp.getSpelling(t);
          a.host_name += text.size() >= 2 ? text.substr(1, text.size() - 2) : text;
          ++g_inst.strings;
        } else if (!t.is(tok::r_paren)) {
          ++g_inst.other_args;
        }
        return;
      }
      if (t.is(tok::l_paren)) {
        g_inst.paren = 1;
        g_inst.strings = 0;
        g_inst.other_args = 0;
        return;
      }
      if (t.is(tok::comma)) {
        g_inst.want_name = true;
        return;
      }
      if (g_inst.want_name && t.getIdentifierInfo() != nullptr) {
        g_inst.want_name = false;
        g_inst.current = t.getIdentifierInfo()->getName().str();
        if (g_inst.current == "host_name" && !a.host_name_loc.isValid()) {
          a.host_name_loc = t.getLocation();
        } else if (g_inst.current == "kernel" && !a.kernel) {
          a.kernel = true;
        } else {
          a.valid = false;
        }
        if (!a.valid) set_attribute_list_error(d, diag::Severity::Error, a.list_loc);
        return;
      }
      a.valid = false;
      set_attribute_list_error(d, diag::Severity::Error, a.list_loc);
      return;
    }
    case Inst::kDecl:
      s.instantiations.back().decl_tokens.insert(t.getLocation().getRawEncoding());
      if (t.isOneOf(tok::l_paren, tok::l_brace)) ++g_inst.paren;
      if (t.isOneOf(tok::r_paren, tok::r_brace)) --g_inst.paren;
      if (t.is(tok::semi) && g_inst.paren <= 0) g_inst.step = Inst::kIdle;
      return;
  }
}

}  // namespace

void watch_tokens(CompilerInstance& ci) {
  state().ci = &ci;
  Preprocessor& pp = ci.getPreprocessor();
  pp.setTokenWatcher([&ci, &pp](const Token& t) {
    watch_thread(t);
    watch_instantiation(t, ci.getDiagnostics(), pp);
    g_last = t;
    g_have_last = true;
  });
}

}  // namespace metallic_msl

static clang::PragmaHandlerRegistry::Add<metallic_msl::MslPragma> kPragma(
    "metallic_msl", "MSL keywords for the Apple-path shader check");
