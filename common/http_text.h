#pragma once
// Small pieces of HTTP/1.1 header text handling shared by Keel's two HTTP
// servers (the admin plane, common/admin_http.cc, and the reference host,
// tools/host/host_http.cc).

#include <string_view>

namespace keel::http {

// `s` without the optional white space (spaces, tabs) around it (RFC 9110 OWS).
inline std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Whether two tokens are equal ignoring ASCII case.
inline bool tokenEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = char(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = char(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Whether the comma-separated header value `list` (Connection, say) holds
// `token`, ignoring case and the white space around each element.
inline bool hasToken(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    std::size_t comma = list.find(',');
    if (tokenEquals(trimOws(list.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace keel::http
