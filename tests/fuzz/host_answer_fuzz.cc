// What a host system answers a host agent (docs/hosts.md): any status and
// any body, read the way participant/adapters/host_http.cc reads them
// (readHostAnswer) for each of try, confirm and cancel. The answer must be
// one of the contract's rows, a fault or a breach, and nothing of the
// host's text may reach a reason or a reference with a control character
// in it (a forged log line) or longer than its bound.

#include <string_view>

#include "participant/adapters/host_http.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace keel;
  if (size < 3) return 0;
  auto call = HostCall(data[0] % 3);
  unsigned status = 100 + (unsigned(data[1]) << 8 | data[2]) % 500;
  std::string_view body(reinterpret_cast<const char*>(data + 3), size - 3);
  HostAnswer a = readHostAnswer(call, status, body);
  (void)hostAnswerName(a.kind);
  if (a.ref.size() > 256) fuzz::violated("a reference longer than 256 bytes was accepted");
  if (a.kind == HostAnswer::Kind::Tried && (call != HostCall::Try || status != 200)) {
    fuzz::violated("'tried' read from an answer that is not a try's 200");
  }
  if ((a.kind == HostAnswer::Kind::Confirmed || a.kind == HostAnswer::Kind::Cancelled) && status != 200 &&
      status != 409) {
    fuzz::violated("an acknowledgement read from a status other than 200 or 409");
  }
  for (char c : a.reason + a.ref) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) fuzz::violated("a control character from the host reached a reason or a reference");
  }
  return 0;
}
