#pragma once
// A strict JSON reader (RFC 8259): tests read what a tool prints with it,
// and keelctl checks the JSON a coordinator sends before passing it on
// (audit entries). The whole
// text must be exactly one JSON value, with nothing around it but JSON white
// space; everything else throws JsonError with the offset: no text at all,
// two documents, a line of prose, a trailing comma, a control character or
// a lone surrogate in a string, a number such as 01, .5, +1 or NaN, bytes
// that are not UTF-8, or an object that names a member twice.
//
// The value comes back as a tree; the accessors throw JsonError when the
// value is not of the kind asked for, so a caller reads fields without
// checking each step.

#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keel {

class JsonError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct JsonMember;

struct Json {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  std::string text;  // a string's value (UTF-8), or a number as written
  std::vector<Json> items;
  std::vector<JsonMember> members;  // in the order written

  bool isObject() const { return kind == Kind::Object; }
  bool has(std::string_view key) const;
  const Json& operator[](std::string_view key) const;
  const std::vector<Json>& array() const {
    if (kind != Kind::Array) throw JsonError("not an array");
    return items;
  }
  const std::string& str() const {
    if (kind != Kind::String) throw JsonError("not a string");
    return text;
  }
  bool flag() const {
    if (kind != Kind::Bool) throw JsonError("not true or false");
    return boolean;
  }
  // Any number, as a double.
  double number() const {
    double v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (kind != Kind::Number || ec != std::errc() || end != text.data() + text.size()) {
      throw JsonError("not a number: " + text);
    }
    return v;
  }
  // A whole number >= 0 (written without fraction or exponent).
  std::uint64_t whole() const {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (kind != Kind::Number || ec != std::errc() || end != text.data() + text.size()) {
      throw JsonError("not a whole number: " + text);
    }
    return v;
  }
};

// One member of an object: a struct of its own rather than std::pair, which
// clang cannot instantiate on Json before Json is complete (the fuzz build).
struct JsonMember {
  std::string first;
  Json second;
};

inline bool Json::has(std::string_view key) const {
  for (auto& [k, v] : members) {
    if (k == key) return true;
  }
  return false;
}

inline const Json& Json::operator[](std::string_view key) const {
  if (kind != Kind::Object) throw JsonError("not an object: no member '" + std::string(key) + "'");
  for (auto& [k, v] : members) {
    if (k == key) return v;
  }
  throw JsonError("no member '" + std::string(key) + "'");
}

class JsonReader {
 public:
  // The one JSON value `text` holds.
  static Json parse(std::string_view text) {
    JsonReader r(text);
    r.space();
    if (r.at_ == text.size()) r.fail("no JSON value");
    Json v = r.value();
    r.space();
    if (r.at_ != text.size()) r.fail("more after the JSON value");
    return v;
  }

 private:
  explicit JsonReader(std::string_view s) : s_(s) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw JsonError("JSON: " + what + " at offset " + std::to_string(at_));
  }
  bool more() const { return at_ < s_.size(); }
  char peek() const { return more() ? s_[at_] : '\0'; }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++at_;
  }
  bool take(char c) {
    if (peek() != c) return false;
    ++at_;
    return true;
  }
  void space() {
    while (more() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++at_;
  }

  Json value() {
    Json v;
    char c = peek();
    if (c == '{') {
      object(v);
    } else if (c == '[') {
      array(v);
    } else if (c == '"') {
      v.kind = Json::Kind::String;
      v.text = string();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      v.kind = Json::Kind::Number;
      v.text = number();
    } else if (literal("true")) {
      v.kind = Json::Kind::Bool;
      v.boolean = true;
    } else if (literal("false")) {
      v.kind = Json::Kind::Bool;
    } else if (!literal("null")) {
      fail("expected a JSON value");
    }
    return v;
  }

  bool literal(std::string_view word) {
    if (s_.substr(at_, word.size()) != word) return false;
    at_ += word.size();
    return true;
  }

  void object(Json& v) {
    v.kind = Json::Kind::Object;
    list('{', '}', [&] {
      std::string key = string();
      if (v.has(key)) fail("member '" + key + "' named twice");
      space();
      expect(':');
      space();
      v.members.push_back(JsonMember{std::move(key), value()});
    });
  }

  void array(Json& v) {
    v.kind = Json::Kind::Array;
    list('[', ']', [&] { v.items.push_back(value()); });
  }

  // `open`, then nothing or elements (each read by `element`) separated by
  // commas, then `close`.
  template <typename Element>
  void list(char open, char close, Element element) {
    expect(open);
    space();
    if (take(close)) return;
    do {
      space();
      element();
      space();
    } while (take(','));
    expect(close);
  }

  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  std::string number() {
    std::size_t start = at_;
    take('-');
    if (!take('0')) {
      if (!(peek() >= '1' && peek() <= '9')) fail("bad number");
      digits();
    }
    if (take('.') && !digits()) fail("no digits after '.'");
    if (take('e') || take('E')) {
      if (!take('+')) take('-');
      if (!digits()) fail("no digits in the exponent");
    }
    return std::string(s_.substr(start, at_ - start));
  }
  bool digits() {
    std::size_t start = at_;
    while (peek() >= '0' && peek() <= '9') ++at_;
    return at_ > start;
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (!more()) fail("unterminated string");
      auto c = static_cast<unsigned char>(s_[at_]);
      if (c == '"') break;
      if (c < 0x20) fail("control character in a string");
      if (c == '\\') {
        ++at_;
        escape(out);
      } else if (c < 0x80) {
        out += char(c);
        ++at_;
      } else {
        utf8(out);
      }
    }
    ++at_;
    return out;
  }

  void escape(std::string& out) {
    // \" \\ \/ \b \f \n \r \t stand for one character each; \uXXXX for a code point.
    static constexpr std::string_view kEscaped = "\"\\/bfnrt", kMeant = "\"\\/\b\f\n\r\t";
    char c = peek();
    ++at_;
    if (auto i = kEscaped.find(c); i != std::string_view::npos) {
      out += kMeant[i];
      return;
    }
    if (c != 'u') fail("bad escape");
    std::uint32_t cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (!literal("\\u")) fail("lone high surrogate");
      std::uint32_t low = hex4();
      if (low < 0xDC00 || low > 0xDFFF) fail("lone high surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    appendUtf8(out, cp);
  }

  std::uint32_t hex4() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++at_) {
      char c = peek();
      int d = -1;
      if (c >= '0' && c <= '9') d = c - '0';
      if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      if (d < 0) fail("bad \\u escape");
      v = v * 16 + std::uint32_t(d);
    }
    return v;
  }

  // One multi-byte UTF-8 character, checked: no overlong forms, no
  // surrogates, nothing past U+10FFFF.
  void utf8(std::string& out) {
    auto lead = static_cast<unsigned char>(s_[at_]);
    int extra = 0;  // continuation bytes
    if (lead >= 0xC2 && lead <= 0xDF) extra = 1;
    if (lead >= 0xE0 && lead <= 0xEF) extra = 2;
    if (lead >= 0xF0 && lead <= 0xF4) extra = 3;
    if (extra == 0) fail("not UTF-8");
    std::uint32_t cp = lead & (0x3F >> extra);
    for (int i = 1; i <= extra; ++i) {
      if (at_ + i >= s_.size() || (static_cast<unsigned char>(s_[at_ + i]) & 0xC0) != 0x80) fail("not UTF-8");
      cp = cp << 6 | (static_cast<unsigned char>(s_[at_ + i]) & 0x3F);
    }
    static constexpr std::uint32_t kLeast[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kLeast[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("not UTF-8");
    out.append(s_.substr(at_, std::size_t(extra) + 1));
    at_ += std::size_t(extra) + 1;
  }

  static void appendUtf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | cp >> 6);
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | cp >> 12);
      out += char(0x80 | (cp >> 6 & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | cp >> 18);
      out += char(0x80 | (cp >> 12 & 0x3F));
      out += char(0x80 | (cp >> 6 & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  std::string_view s_;
  std::size_t at_ = 0;
};

}  // namespace keel
