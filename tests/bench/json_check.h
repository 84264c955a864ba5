#pragma once
// A small strict JSON reader for the benchmark tests: checks that a line is
// one well-formed JSON object and returns its top-level members (numbers as
// numbers, anything else as its raw text). Throws std::runtime_error on any
// syntax error.

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>

namespace keel::test {

struct JsonValue {
  bool isNumber = false;
  double number = 0;
  std::string raw;
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& s) : s_(s) {}

  std::map<std::string, JsonValue> topLevelObject() {
    std::map<std::string, JsonValue> out;
    ws();
    expect('{');
    ws();
    if (peek() == '}') {
      ++i_;
    } else {
      for (;;) {
        ws();
        std::string k = string();
        ws();
        expect(':');
        ws();
        std::size_t start = i_;
        JsonValue v;
        v.isNumber = value();
        v.raw = s_.substr(start, i_ - start);
        if (v.isNumber) v.number = std::strtod(v.raw.c_str(), nullptr);
        out[k] = v;
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        break;
      }
    }
    ws();
    if (i_ != s_.size()) fail("trailing characters");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error("JSON: " + what + " at offset " + std::to_string(i_));
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (peek() != '"') {
      if (i_ >= s_.size()) fail("unterminated string");
      if (s_[i_] == '\\') {
        ++i_;
        if (i_ >= s_.size()) fail("bad escape");
      }
      out += s_[i_++];
    }
    ++i_;
    return out;
  }
  // Returns true if the value was a number.
  bool value() {
    char c = peek();
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i_;
      ws();
      if (peek() == close) {
        ++i_;
        return false;
      }
      for (;;) {
        ws();
        if (c == '{') {
          string();
          ws();
          expect(':');
          ws();
        }
        value();
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(close);
        return false;
      }
    }
    if (c == '"') {
      string();
      return false;
    }
    for (const char* lit : {"true", "false", "null"}) {
      if (s_.compare(i_, std::strlen(lit), lit) == 0) {
        i_ += std::strlen(lit);
        return false;
      }
    }
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    std::strtod(begin, &end);
    if (end == begin) fail("expected a value");
    i_ += std::size_t(end - begin);
    return true;
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

}  // namespace keel::test
